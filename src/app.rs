//! Process wiring: compiled config -> runtime -> bound listeners -> served
//! until shutdown; config-file watching and SIGHUP reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{self, Config};
use crate::gateway::{BuildError, Gateway, Runtime};
use crate::metrics::Metrics;
use crate::workers::{self, Workers};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

/// A running gateway: its bound addresses and the means to stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Set when `forward_auth.listen` is configured.
    pub forward_auth_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    /// Stops the proxy and forward-auth listeners and the watchers.
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The admin listener stops last, once the others have drained, so that
    /// `/readyz` answering 503 is observable for the whole drain.
    admin_stop: watch::Sender<bool>,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// The data-plane threads; they stop when this is dropped.
    workers: Workers,
}

impl Running {
    /// Starts draining: `/readyz` turns 503, the proxy and forward-auth
    /// listeners close, in-flight requests finish (within `shutdown_grace`).
    /// The admin listener keeps answering until [`Running::shutdown`] has
    /// seen the others drain.
    pub fn begin_shutdown(&self) {
        self.gateway.start_draining();
        let _ = self.shutdown.send(true);
    }

    /// Shuts down: waits until the proxy and forward-auth listeners have
    /// drained (at most `shutdown_grace`), then closes the admin listener.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        while self.tasks.join_next().await.is_some() {}
        let _ = self.admin_stop.send(true);
        if let Some(admin) = self.admin.take() {
            let _ = admin.await;
        }
    }

    /// Watches the config file at `path` for the rest of this gateway's life:
    /// polled once a second and reloaded when its content changes (in-place
    /// edits, replacement by rename, Kubernetes' `..data` symlink swap), and
    /// on SIGHUP. Listener addresses and TLS file paths are not changed by a
    /// reload (logged).
    pub fn watch(&mut self, path: PathBuf) {
        let stop = self.shutdown_signal();
        let baseline = self.gateway.runtime().config.source_digest;
        self.tasks
            .spawn(watch_config(self.gateway.clone(), path, baseline, stop));
    }

    /// A future that resolves when shutdown begins.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|&stop| stop).await;
        }
    }
}

impl Drop for Running {
    /// Dropped without [`Running::shutdown`] (tests): stop the admin listener too
    /// (the other tasks are aborted with their `JoinSet`).
    fn drop(&mut self) {
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Builds the runtime, binds every listener and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    crate::tls::install_crypto_provider();
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let metrics = Metrics::new();
    let cert = match &config.tls {
        Some(files) => Some(crate::tls::ReloadingCert::load(&files.cert, &files.key)?),
        None => None,
    };
    let tls = match &cert {
        Some(cert) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            crate::tls::server_config(cert.clone())?,
        ))),
        None => None,
    };
    let proxy_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            source,
        })?;
    let forward_auth_listener = match &config.forward_auth {
        Some(fa) => Some(bind(fa.listen).await?),
        None => None,
    };
    let forward_auth_addr = match &forward_auth_listener {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?),
        None => None,
    };
    let workers = Workers::start(workers::default_count()).map_err(StartError::Workers)?;
    let runtime = Runtime::build(config, &metrics, None)?;
    let gateway = Gateway::new(runtime, metrics);
    let (shutdown, _) = watch::channel(false);
    let (admin_stop, _) = watch::channel(false);
    let mut running = Running {
        proxy_addr,
        admin_addr,
        forward_auth_addr,
        gateway: gateway.clone(),
        shutdown,
        tasks: JoinSet::new(),
        admin_stop,
        admin: None,
        workers,
    };
    if let Some(cert) = cert {
        let stop = running.shutdown_signal();
        running.tasks.spawn(cert.watch(stop));
    }
    let stop = running.shutdown_signal();
    running.tasks.spawn(crate::server::serve(
        proxy_listener,
        gateway.clone(),
        tls,
        running.workers.clone(),
        stop,
    ));
    let mut admin_stop = running.admin_stop.subscribe();
    let stop = async move {
        let _ = admin_stop.wait_for(|&stop| stop).await;
    };
    running.admin = Some(tokio::spawn(crate::admin::serve(
        admin_listener,
        gateway.clone(),
        stop,
    )));
    if let Some(listener) = forward_auth_listener {
        let stop = running.shutdown_signal();
        running.tasks.spawn(crate::forward_auth::serve(
            listener,
            gateway.clone(),
            running.workers.clone(),
            stop,
        ));
    }
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, forward_auth = ?forward_auth_addr, "scopegate serving");
    Ok(running)
}

/// Loads `path` again and installs it when it compiles; otherwise logs every
/// error and keeps the old table. Returns whether the new table was installed.
pub fn reload(gateway: &Gateway, path: &Path) -> bool {
    let current = gateway.runtime();
    match config::load(path) {
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("reload rejected: {e}");
            }
            gateway.metrics.reload(false);
            false
        }
        Ok(config) => {
            let old = &current.config;
            if config.listen != old.listen
                || config.admin_listen != old.admin_listen
                || config.tls != old.tls
                || config.forward_auth.as_ref().map(|f| f.listen)
                    != old.forward_auth.as_ref().map(|f| f.listen)
            {
                tracing::warn!("listener addresses or TLS files changed: restart scopegate to apply them; the rest of the reload applies now");
            }
            if crate::server::ServerLimits::from_config(&config)
                != crate::server::ServerLimits::from_config(old)
            {
                tracing::warn!("limits.*, timeouts.client_header or shutdown_grace changed: the listeners keep the values they started with until a restart; the rest of the reload applies now");
            }
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            match gateway.reload(config) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "config reloaded");
                    gateway.metrics.reload(true);
                    true
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), "reload rejected: {e}");
                    gateway.metrics.reload(false);
                    false
                }
            }
        }
    }
}

/// Watches `path` (polling its content once a second: this sees in-place
/// edits, editors that replace the file, and Kubernetes' symlink swaps
/// alike) and reloads on change or on SIGHUP, until shutdown.
///
/// The SIGHUP handler is installed, and the file's baseline content read,
/// when this is called, not when the future first runs: a SIGHUP right after
/// never falls to the default action (terminate), and an edit right after is
/// never missed.
pub fn watch_config(
    gateway: Arc<Gateway>,
    path: PathBuf,
    baseline: Option<[u8; 32]>,
    shutdown: impl std::future::Future<Output = ()>,
) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let digest_now = |path: &PathBuf| std::fs::read(path).ok().map(|b| config::file_digest(&b));
    // The baseline is what was loaded (when known), else the file now: an
    // edit made after the load is seen as a change.
    let mut last = baseline.or_else(|| digest_now(&path));
    async move {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<()>();
            tokio::select! {
                _ = &mut shutdown => return,
                _ = sighup => {
                    tracing::info!("SIGHUP: reloading");
                    last = digest_now(&path);
                    reload(&gateway, &path);
                }
                _ = tick.tick() => {
                    let now = digest_now(&path);
                    if now.is_some() && now != last {
                        last = now;
                        reload(&gateway, &path);
                    }
                }
            }
        }
    }
}

/// `scopegate run`: serve until SIGTERM/SIGINT, reloading on edits and SIGHUP.
pub async fn run(config: Config) -> Result<(), StartError> {
    let path = config.source.clone();
    // Installed before anything is served: a SIGTERM that arrives while the
    // first request is in flight drains it instead of killing the process.
    let terminate = terminate_signal();
    let mut running = start(config).await?;
    running.watch(path);
    terminate.await;
    tracing::info!("shutting down: draining connections");
    running.shutdown().await;
    tracing::info!("bye");
    Ok(())
}

/// SIGTERM or SIGINT. The handlers are installed when this is called (the
/// default action, terminate, no longer applies from then on); the future
/// resolves at the first of them.
pub fn terminate_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match signals {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
