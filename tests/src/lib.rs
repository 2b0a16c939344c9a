//! Harness for Umbra's end-to-end tests: locating the built binaries, starting them on
//! loopback with fresh data directories, and killing, pausing and restarting them.
