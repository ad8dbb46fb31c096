//! The runner's `LISTEN` connection: the store's NOTIFY (new events) wakes
//! every leader; an operator's request wakes its listener's task.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sqlx::postgres::PgListener;

use super::shared::{ListenerShared, RunnerShared};

/// Listens on the store's channel and the request channel until shutdown.
/// After a reconnect every task is woken (notifications may have been
/// missed); polling covers the time the connection is down.
pub(crate) async fn listen(
    runner: Arc<RunnerShared>,
    listeners: HashMap<String, Arc<ListenerShared>>,
) {
    let mut shutdown = runner.shutdown.subscribe();
    let wake_all = || {
        runner.wake.send_modify(|n| *n = n.wrapping_add(1));
        for listener in listeners.values() {
            listener.requests.store(true, Ordering::SeqCst);
            listener.poke.notify_one();
        }
    };
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let connected = async {
            let mut connection = PgListener::connect_with(&runner.pool).await?;
            connection
                .listen_all([runner.channel.as_str(), runner.request_channel.as_str()])
                .await?;
            Ok::<_, sqlx::Error>(connection)
        }
        .await;
        let mut connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, channel = %runner.channel, "LISTEN failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(runner.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        wake_all();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = connection.try_recv() => match received {
                    Ok(Some(notification)) if notification.channel() == runner.request_channel => {
                        if let Some(listener) = listeners.get(notification.payload()) {
                            listener.requests.store(true, Ordering::SeqCst);
                            listener.poke.notify_one();
                        }
                    }
                    Ok(Some(_)) => runner.wake.send_modify(|n| *n = n.wrapping_add(1)),
                    Ok(None) => {
                        tracing::debug!("LISTEN connection re-established");
                        wake_all();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                        wake_all();
                        break;
                    }
                },
            }
        }
    }
}
