//! The `ui` command of [`cli::main`](crate::cli::main): the console over the machine's own
//! checkpoint store and signal backend (see [`crate::console`]).

use std::net::{IpAddr, SocketAddr};

use crate::Machine;
use crate::console::{Console, ConsoleOptions};
use crate::signals::{DispatchOptions, Dispatcher};

/// Serves the console until Ctrl-C; with `dispatch`, also delivers signals and resumes the
/// runs they wake (what `dispatch` does), so an approval sent from the page takes effect.
pub(crate) async fn ui(
    root: &Machine,
    bind: IpAddr,
    port: u16,
    allow_remote: bool,
    dispatch: bool,
) -> Result<String, String> {
    let store = root.store().cloned().ok_or_else(|| {
        format!(
            "machine `{}` runs without checkpoints: the console has nothing to show",
            root.spec().name
        )
    })?;
    let mut options = ConsoleOptions::new(store);
    options.signals = Some(root.signal_backend().clone());
    options.addr = SocketAddr::new(bind, port);
    options.allow_remote = allow_remote;
    options.store_name = format!("machine `{}`", root.spec().name);
    let console = Console::bind(options).await.map_err(|e| e.to_string())?;
    eprintln!(
        "console: {} (machine `{}`{}); Ctrl-C to stop",
        console.url(),
        root.spec().name,
        if dispatch {
            ", dispatching signals"
        } else {
            "; signals sent from the page wait for `dispatch`"
        }
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if !dispatch {
        console.serve(shutdown).await.map_err(|e| e.to_string())?;
        return Ok(String::new());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let dispatcher = Dispatcher::with_options(root, DispatchOptions::new());
    let mut wait = stopped.clone();
    let dispatching = async move {
        dispatcher
            .run_until(async move {
                let _ = wait.wait_for(|s| *s).await;
            })
            .await
    };
    let serving = console.serve(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let (served, dispatched) = tokio::join!(serving, dispatching);
    served.map_err(|e| e.to_string())?;
    dispatched.map_err(|e| e.to_string())?;
    Ok(String::new())
}
