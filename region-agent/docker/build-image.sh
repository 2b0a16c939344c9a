#!/bin/sh
# Builds the Docker image `umbra-sample:local` FROM scratch from a statically linked
# umbra-sample. Nothing is pulled: the image holds one file, our binary.
#
# There is no musl target on the build machines, so the binary is glibc linked statically
# (-C target-feature=+crt-static). That is sound for umbra-sample because it never resolves
# host names through NSS (it listens on and connects to numeric addresses only).
# The build uses its own target directory (RUSTFLAGS differ, which would otherwise invalidate
# the shared one).
#
# Usage: region-agent/docker/build-image.sh [IMAGE_TAG]     (default umbra-sample:local)
set -eu
tag=${1:-umbra-sample:local}
root=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${UMBRA_STATIC_TARGET_DIR:-$root/target/static}
triple=x86_64-unknown-linux-gnu

RUSTFLAGS="-C target-feature=+crt-static" cargo build --manifest-path "$root/Cargo.toml" \
    -p umbra-agent --bin umbra-sample --target "$triple" --target-dir "$target_dir"
bin="$target_dir/$triple/debug/umbra-sample"

# ldd prints "statically linked" or "not a dynamic executable" for a static binary, and
# "lib => path" lines for a dynamic one.
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "error: $bin is dynamically linked; a FROM scratch image cannot run it" >&2
    exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/umbra-sample"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY umbra-sample /umbra-sample
EXPOSE 8080
ENTRYPOINT ["/umbra-sample"]
CMD ["--listen", "0.0.0.0:8080", "--data-dir", "/data"]
DOCKERFILE
docker build -q -t "$tag" "$ctx"
echo "built $tag from $bin"
