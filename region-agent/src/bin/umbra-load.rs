//! `umbra-load`: Umbra's traffic tool for tests, the demo and benchmarks.
//!
//! `umbra-load run` sends constant-rate HTTP load at fixed URLs or at a service name resolved
//! through our DNS (honouring TTLs) and prints a report as text or JSON; `umbra-load serve`
//! runs a named test backend; `umbra-load proxy` runs the embedded weighted proxy on its own,
//! so benchmarks compare it with HAProxy process against process. It is a thin shell over
//! `umbra_agent::loadgen` and `umbra_agent::lb`; it must not grow logic of its own.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hyper::header::HeaderName;
use umbra_agent::lb::BackendWeight;
use umbra_agent::lb::named_backend::NamedBackend;
use umbra_agent::lb::proxy::{EmbeddedProxy, ProxyConfig};
use umbra_agent::loadgen::{LoadConfig, LoadGenerator, RequestSpec, ServiceTarget, Target};

#[derive(Parser)]
#[command(
    name = "umbra-load",
    version,
    about = "Constant-rate HTTP load, test backends and the embedded proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send constant-rate load and report every outcome.
    Run(RunArgs),
    /// Serve a named test backend (answers 200 with its name in `x-umbra-backend`).
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Run the embedded weighted proxy in front of fixed backends.
    Proxy {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// A backend as NAME=ADDR=WEIGHT, e.g. a=127.0.0.1:8081=90; repeat for more.
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// Base URL to load (http://host:port); repeat to spread requests over several.
    #[arg(long = "url", conflicts_with = "service")]
    urls: Vec<String>,
    /// Service name to resolve through DNS before each request (answers cached for their TTL).
    #[arg(long)]
    service: Option<String>,
    /// HTTP port of the service's addresses.
    #[arg(long, default_value_t = 80, requires = "service")]
    port: u16,
    /// DNS server to ask for the service name (IP:PORT); repeat for several.
    #[arg(long = "dns", requires = "service")]
    dns_servers: Vec<SocketAddr>,
    /// Offered requests per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Stop scheduling after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = umbra_agent::loadgen::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,
    #[arg(long, default_value_t = umbra_agent::loadgen::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64)]
    timeout_ms: u64,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// Count responses by this response header, e.g. x-umbra-backend.
    #[arg(long)]
    tally_header: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Print a progress line to stderr every second.
    #[arg(long)]
    progress: bool,
}

fn main() -> std::process::ExitCode {
    umbra_proto::exit::code(dispatch())
}

fn dispatch() -> Result<()> {
    umbra_proto::logs::init("warn");
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Serve { name, listen } => serve(&name, listen).await,
            Command::Proxy { listen, backends } => proxy(listen, &backends).await,
        }
    })
}

async fn run(args: RunArgs) -> Result<()> {
    let target = match &args.service {
        Some(name) => {
            if args.dns_servers.is_empty() {
                bail!("--service needs at least one --dns IP:PORT to ask");
            }
            let name = if name.ends_with('.') {
                name.clone()
            } else {
                format!("{name}.")
            };
            Target::Service(ServiceTarget {
                name,
                port: args.port,
                dns_servers: args.dns_servers.clone(),
            })
        }
        None => {
            if args.urls.is_empty() {
                bail!("give --url http://host:port (repeatable) or --service NAME --dns IP:PORT");
            }
            let urls = args
                .urls
                .iter()
                .map(|u| u.parse().with_context(|| format!("{u:?} is not a URL")))
                .collect::<Result<Vec<_>>>()?;
            Target::Urls(urls)
        }
    };
    if !(args.duration_secs.is_finite() && args.duration_secs > 0.0) {
        bail!("--duration-secs must be a positive number of seconds");
    }
    let mut config = LoadConfig::new(
        target,
        args.rate,
        args.requests,
        Duration::from_secs_f64(args.duration_secs),
    );
    config.max_in_flight = args.max_in_flight;
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.tally_header = match &args.tally_header {
        Some(h) => Some(
            HeaderName::try_from(h.as_str())
                .with_context(|| format!("{h:?} is not a header name"))?,
        ),
        None => None,
    };
    let method: hyper::Method = args
        .method
        .parse()
        .with_context(|| format!("{:?} is not an HTTP method", args.method))?;
    let path = args.path.clone();
    let generator = LoadGenerator::new(config, move |_| {
        let mut spec = RequestSpec::get(path.clone());
        spec.method = method.clone();
        spec
    })?;
    if args.progress {
        let mut progress = generator.progress();
        tokio::spawn(async move {
            let mut last_print = std::time::Instant::now();
            while progress.changed().await.is_ok() {
                let p = progress.borrow_and_update().clone();
                if last_print.elapsed() >= Duration::from_secs(1) || p.finished {
                    last_print = std::time::Instant::now();
                    eprintln!(
                        "{:6.1}s  completed {}  ok {}  failed {}  in flight {}  p99 {:.2} ms",
                        p.elapsed_secs,
                        p.counts.completed,
                        p.counts.ok,
                        p.counts.failed(),
                        p.in_flight,
                        p.latency_ok.p99_us as f64 / 1000.0
                    );
                }
            }
        });
    }
    let cancel = generator.cancel_token();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let report = generator.run().await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}

async fn serve(name: &str, listen: SocketAddr) -> Result<()> {
    let backend = NamedBackend::start(name, listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    // The first stdout line is the bound address, for tests and scripts that asked for port 0.
    println!("{}", backend.local_addr());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    backend.shutdown();
    Ok(())
}

async fn proxy(listen: SocketAddr, specs: &[String]) -> Result<()> {
    let mut backends = Vec::with_capacity(specs.len());
    for spec in specs {
        let parts: Vec<&str> = spec.split('=').collect();
        let [name, addr, weight] = parts[..] else {
            bail!("--backend {spec:?} must be NAME=ADDR=WEIGHT, e.g. a=127.0.0.1:8081=90");
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("{addr:?} is not IP:PORT"))?;
        let weight: u32 = weight
            .parse()
            .with_context(|| format!("{weight:?} is not a weight"))?;
        backends.push(BackendWeight::new(name, addr, weight));
    }
    let proxy = EmbeddedProxy::start(ProxyConfig::new(listen), &backends).await?;
    println!("{}", proxy.local_addr());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    proxy.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
