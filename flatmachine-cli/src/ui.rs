//! `flatmachine ui`: the console over a checkpoint store named on the command line (a
//! directory, `sqlite:PATH` or `redis://…`), without the application binary.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use flatmachine_runtime::console::{Console, ConsoleOptions};

/// What `flatmachine ui` was asked for.
pub struct UiArgs {
    /// The checkpoint store (default: `.checkpoints/checkpoints.sqlite` when it exists, else
    /// `.checkpoints`).
    pub dir: Option<String>,
    /// The Redis key prefix.
    pub prefix: Option<String>,
    /// Where signals sent from the page go.
    pub signals: Option<String>,
    /// The address.
    pub bind: IpAddr,
    /// The port.
    pub port: u16,
    /// Allow a non-loopback address.
    pub allow_remote: bool,
}

/// The store `ui` reads by default.
fn default_store() -> Result<String, String> {
    if Path::new(".checkpoints/checkpoints.sqlite").is_file() {
        return Ok("sqlite:.checkpoints/checkpoints.sqlite".to_owned());
    }
    if Path::new(".checkpoints").is_dir() {
        return Ok(".checkpoints".to_owned());
    }
    Err("no checkpoint store here: looked at .checkpoints/ and .checkpoints/checkpoints.sqlite; pass --dir DIR, --dir sqlite:PATH or --dir redis://HOST:PORT".to_owned())
}

/// Serves the console until Ctrl-C.
pub fn run(args: UiArgs) -> Result<String, String> {
    let name = match &args.dir {
        Some(dir) => dir.clone(),
        None => default_store()?,
    };
    let store = crate::inspect::open(&name, args.prefix.as_deref())?;
    let signals = args
        .signals
        .as_deref()
        .map(crate::signals::open_signals)
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let mut options = ConsoleOptions::new(store);
        options.addr = SocketAddr::new(args.bind, args.port);
        options.allow_remote = args.allow_remote;
        let signalled = signals.is_some();
        options.signals = signals;
        options.store_name = name.clone();
        let console = Console::bind(options).await.map_err(|e| e.to_string())?;
        eprintln!(
            "console: {} (store {name}{}); Ctrl-C to stop",
            console.url(),
            if signalled {
                ""
            } else {
                "; pass --signals STORE to send signals from the page"
            }
        );
        console
            .serve(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::new())
    })
}
