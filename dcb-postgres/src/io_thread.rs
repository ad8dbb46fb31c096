//! The store's own I/O thread: the writer and the reader run there, on a
//! single-threaded Tokio runtime, with a few connections of their own.
//!
//! Appends and decision reads pass through these two tasks, so every delay
//! in waking them delays every caller. On the application's runtime they
//! waited in line behind the application's tasks (on a busy 2-core machine,
//! about a third of a batch's round trip); a thread of their own that
//! mostly sleeps is woken by the operating system as soon as a reply
//! arrives.

use std::thread::JoinHandle;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A thread running a current-thread runtime until dropped.
pub(crate) struct IoThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts the thread.
    ///
    /// # Errors
    /// The runtime or the thread cannot be created.
    pub(crate) fn start(name: &str) -> std::io::Result<IoThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Runs the tasks spawned through the handle until the store
                // is dropped (then its tasks have nothing left to serve).
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(IoThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Spawns tasks on this thread.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// A pool of at most `connections`, opened on this thread's runtime
    /// with `like`'s connect options and acquire timeout (its connections
    /// are driven by this thread, not by the runtime that happens to open
    /// them).
    pub(crate) fn pool_like(&self, like: &PgPool, connections: u32) -> PgPool {
        let _enter = self.handle.enter();
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(like.options().get_acquire_timeout())
            .test_before_acquire(false)
            .connect_lazy_with((*like.connect_options()).clone())
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not joined: the last store handle may be dropped on a runtime
        // thread, which must not block; the thread ends on its own.
        drop(self.thread.take());
    }
}
