//! The SDK client: a remote one over gRPC, or a local one that logs.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::pb::beta::sdk_client::SdkClient as BetaClient;
use crate::pb::beta::{
    AddListValueRequest, Counter, CounterUpdateRequest, GetCounterRequest, GetListRequest, List,
    RemoveListValueRequest, UpdateCounterRequest,
};
use crate::pb::sdk::sdk_client::SdkClient;
use crate::pb::sdk::{Duration as PbDuration, Empty, GameServer, KeyValue};

/// The environment variable the Agones sidecar's gRPC port is in.
pub const GRPC_PORT_ENV: &str = "AGONES_SDK_GRPC_PORT";
/// The sidecar's gRPC port when the variable is unset.
pub const DEFAULT_GRPC_PORT: u16 = 9357;
/// Health pings buffered when the stream to the sidecar is slow; more are
/// dropped (a ping only says "alive", the next one says it again).
const HEALTH_QUEUE_LEN: usize = 4;

/// Whether to speak to an Agones sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never: every call is logged and succeeds.
    Local,
    /// When [`GRPC_PORT_ENV`] is set (Agones sets it in its pods); local otherwise.
    Auto,
    /// Always: connecting fails when no sidecar answers in time.
    Required,
}

/// How to reach the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkConfig {
    pub mode: Mode,
    /// `None` in [`Mode::Auto`]: the variable was unset.
    pub port: Option<u16>,
    /// Connection attempts before giving up (the sidecar may start after us).
    pub connect_attempts: u32,
    /// The wait after the first failed attempt; it doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Each call's deadline.
    pub call_timeout: Duration,
}

impl SdkConfig {
    /// `mode`, with the port from [`GRPC_PORT_ENV`] (or [`DEFAULT_GRPC_PORT`]
    /// when required), 8 attempts from 100 ms backoff up to 2 s, 5 s calls.
    pub fn from_env(mode: Mode) -> SdkConfig {
        let env = std::env::var(GRPC_PORT_ENV).ok();
        SdkConfig::new(mode, env.as_deref())
    }

    /// As [`SdkConfig::from_env`], with the variable's value given.
    pub fn new(mode: Mode, port_env: Option<&str>) -> SdkConfig {
        let port = port_env.and_then(|p| p.trim().parse().ok());
        SdkConfig {
            mode,
            port: match mode {
                Mode::Local => None,
                Mode::Auto => port,
                Mode::Required => Some(port.unwrap_or(DEFAULT_GRPC_PORT)),
            },
            connect_attempts: 8,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            call_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error(
        "no Agones SDK server answered on 127.0.0.1:{port} after {attempts} attempts ({last}); \
         is the pod run by Agones? Outside Kubernetes use local mode"
    )]
    Unreachable {
        port: u16,
        attempts: u32,
        last: String,
    },
    #[error("Agones SDK call {call} failed: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

#[derive(Debug, Clone)]
struct Remote {
    stable: SdkClient<Channel>,
    beta: BetaClient<Channel>,
}

/// The SDK client. Cheap to clone; every method takes `&self`.
#[derive(Debug, Clone)]
pub struct Sdk {
    remote: Option<Remote>,
    call_timeout: Duration,
}

impl Sdk {
    /// A client that only logs.
    pub fn local() -> Sdk {
        Sdk {
            remote: None,
            call_timeout: Duration::from_secs(5),
        }
    }

    /// Connects as `config` says, retrying with backoff.
    pub async fn connect(config: &SdkConfig) -> Result<Sdk, SdkError> {
        let Some(port) = config.port.filter(|_| config.mode != Mode::Local) else {
            tracing::info!("Agones: local mode (SDK calls are logged, nothing is sent)");
            return Ok(Sdk::local());
        };
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(|e| SdkError::Unreachable {
                port,
                attempts: 0,
                last: e.to_string(),
            })?
            .connect_timeout(config.call_timeout);
        let mut backoff = config.backoff_initial;
        let mut last = String::new();
        let attempts = config.connect_attempts.max(1);
        for attempt in 1..=attempts {
            match endpoint.connect().await {
                Ok(channel) => {
                    tracing::info!(port, "Agones: connected to the SDK server");
                    return Ok(Sdk {
                        remote: Some(Remote {
                            stable: SdkClient::new(channel.clone()),
                            beta: BetaClient::new(channel),
                        }),
                        call_timeout: config.call_timeout,
                    });
                }
                Err(e) => {
                    last = e.to_string();
                    tracing::warn!(port, attempt, "Agones: SDK server not reachable: {e}");
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
        Err(SdkError::Unreachable {
            port,
            attempts,
            last,
        })
    }

    /// Whether calls reach a sidecar.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub async fn ready(&self) -> Result<(), SdkError> {
        let Some(r) = &self.remote else {
            tracing::info!("Agones (local): Ready");
            return Ok(());
        };
        self.unary("Ready", r.stable.clone().ready(Empty {}))
            .await?;
        Ok(())
    }

    pub async fn allocate(&self) -> Result<(), SdkError> {
        let Some(r) = &self.remote else {
            tracing::info!("Agones (local): Allocate");
            return Ok(());
        };
        self.unary("Allocate", r.stable.clone().allocate(Empty {}))
            .await?;
        Ok(())
    }

    pub async fn shutdown(&self) -> Result<(), SdkError> {
        let Some(r) = &self.remote else {
            tracing::info!("Agones (local): Shutdown");
            return Ok(());
        };
        self.unary("Shutdown", r.stable.clone().shutdown(Empty {}))
            .await?;
        Ok(())
    }

    pub async fn reserve(&self, for_: Duration) -> Result<(), SdkError> {
        let Some(r) = &self.remote else {
            tracing::info!(seconds = for_.as_secs(), "Agones (local): Reserve");
            return Ok(());
        };
        let seconds = i64::try_from(for_.as_secs()).unwrap_or(i64::MAX);
        self.unary("Reserve", r.stable.clone().reserve(PbDuration { seconds }))
            .await?;
        Ok(())
    }

    pub async fn set_label(&self, key: &str, value: &str) -> Result<(), SdkError> {
        let Some(r) = &self.remote else {
            tracing::info!(key, value, "Agones (local): SetLabel");
            return Ok(());
        };
        let kv = KeyValue {
            key: key.into(),
            value: value.into(),
        };
        self.unary("SetLabel", r.stable.clone().set_label(kv))
            .await?;
        Ok(())
    }

    pub async fn set_annotation(&self, key: &str, value: &str) -> Result<(), SdkError> {
        let Some(r) = &self.remote else {
            tracing::info!(key, value, "Agones (local): SetAnnotation");
            return Ok(());
        };
        let kv = KeyValue {
            key: key.into(),
            value: value.into(),
        };
        self.unary("SetAnnotation", r.stable.clone().set_annotation(kv))
            .await?;
        Ok(())
    }

    /// The GameServer; in local mode an empty one whose state is `Ready`.
    pub async fn get_game_server(&self) -> Result<GameServer, SdkError> {
        let Some(r) = &self.remote else {
            return Ok(local_game_server());
        };
        self.unary("GetGameServer", r.stable.clone().get_game_server(Empty {}))
            .await
    }

    /// The GameServer now and after every change. In local mode nothing
    /// ever changes: [`Watch::next`] never returns.
    pub async fn watch_game_server(&self) -> Result<Watch, SdkError> {
        let Some(r) = &self.remote else {
            return Ok(Watch { stream: None });
        };
        // A watch lives as long as the process: no call deadline.
        let mut client = r.stable.clone();
        let stream = client
            .watch_game_server(Empty {})
            .await
            .map_err(|status| SdkError::Call {
                call: "WatchGameServer",
                status,
            })?;
        Ok(Watch {
            stream: Some(stream.into_inner()),
        })
    }

    /// Starts the `Health` client stream; [`Health::ping`] sends one ping.
    /// The stream ends when the [`Health`] is dropped.
    pub fn health(&self) -> Health {
        let Some(r) = &self.remote else {
            return Health { tx: None };
        };
        let (tx, rx) = mpsc::channel(HEALTH_QUEUE_LEN);
        let mut client = r.stable.clone();
        tokio::spawn(async move {
            if let Err(status) = client.health(ReceiverStream::new(rx)).await {
                tracing::warn!("Agones: the health stream ended: {status}");
            }
        });
        Health { tx: Some(tx) }
    }

    pub async fn get_counter(&self, name: &str) -> Result<Counter, SdkError> {
        let Some(r) = &self.remote else {
            return Ok(Counter {
                name: name.into(),
                ..Counter::default()
            });
        };
        let request = GetCounterRequest { name: name.into() };
        self.unary("GetCounter", r.beta.clone().get_counter(request))
            .await
    }

    /// Adds `diff` (which may be negative) to a counter.
    pub async fn add_to_counter(&self, name: &str, diff: i64) -> Result<Counter, SdkError> {
        self.update_counter(CounterUpdateRequest {
            name: name.into(),
            count: None,
            capacity: None,
            count_diff: diff,
        })
        .await
    }

    pub async fn set_counter_capacity(
        &self,
        name: &str,
        capacity: i64,
    ) -> Result<Counter, SdkError> {
        self.update_counter(CounterUpdateRequest {
            name: name.into(),
            count: None,
            capacity: Some(capacity),
            count_diff: 0,
        })
        .await
    }

    pub async fn set_counter(&self, name: &str, count: i64) -> Result<Counter, SdkError> {
        self.update_counter(CounterUpdateRequest {
            name: name.into(),
            count: Some(count),
            capacity: None,
            count_diff: 0,
        })
        .await
    }

    async fn update_counter(&self, update: CounterUpdateRequest) -> Result<Counter, SdkError> {
        let Some(r) = &self.remote else {
            tracing::debug!(?update, "Agones (local): UpdateCounter");
            return Ok(Counter {
                name: update.name,
                count: update.count.unwrap_or(update.count_diff),
                capacity: update.capacity.unwrap_or(0),
            });
        };
        let request = UpdateCounterRequest {
            counter_update_request: Some(update),
        };
        self.unary("UpdateCounter", r.beta.clone().update_counter(request))
            .await
    }

    pub async fn get_list(&self, name: &str) -> Result<List, SdkError> {
        let Some(r) = &self.remote else {
            return Ok(empty_list(name));
        };
        let request = GetListRequest { name: name.into() };
        self.unary("GetList", r.beta.clone().get_list(request))
            .await
    }

    /// Adds a value; the sidecar refuses a duplicate and a full list (with
    /// no reliable status code: read the List back to tell which).
    pub async fn add_list_value(&self, name: &str, value: &str) -> Result<List, SdkError> {
        let Some(r) = &self.remote else {
            tracing::debug!(name, value, "Agones (local): AddListValue");
            return Ok(empty_list(name));
        };
        let request = AddListValueRequest {
            name: name.into(),
            value: value.into(),
        };
        self.unary("AddListValue", r.beta.clone().add_list_value(request))
            .await
    }

    /// Removes a value; the sidecar refuses one that is not there.
    pub async fn remove_list_value(&self, name: &str, value: &str) -> Result<List, SdkError> {
        let Some(r) = &self.remote else {
            tracing::debug!(name, value, "Agones (local): RemoveListValue");
            return Ok(empty_list(name));
        };
        let request = RemoveListValueRequest {
            name: name.into(),
            value: value.into(),
        };
        self.unary("RemoveListValue", r.beta.clone().remove_list_value(request))
            .await
    }

    /// Each call's deadline.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// One unary call under the call deadline (streams have none).
    async fn unary<T>(
        &self,
        call: &'static str,
        response: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, SdkError> {
        match tokio::time::timeout(self.call_timeout, response).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(SdkError::Call { call, status }),
            Err(_) => Err(SdkError::Call {
                call,
                status: tonic::Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.call_timeout
                )),
            }),
        }
    }
}

fn local_game_server() -> GameServer {
    use crate::pb::sdk::game_server::{ObjectMeta, Status};
    GameServer {
        object_meta: Some(ObjectMeta {
            name: "local".into(),
            ..ObjectMeta::default()
        }),
        spec: None,
        status: Some(Status {
            state: "Ready".into(),
            ..Status::default()
        }),
    }
}

/// The sending end of the `Health` stream.
#[derive(Debug)]
pub struct Health {
    tx: Option<mpsc::Sender<Empty>>,
}

impl Health {
    /// Sends one ping; false when the stream to the sidecar has ended (the
    /// pod will be marked unhealthy) or is backed up.
    pub fn ping(&self) -> bool {
        match &self.tx {
            Some(tx) => tx.try_send(Empty {}).is_ok(),
            None => true,
        }
    }
}

/// GameServer updates from `WatchGameServer`.
#[derive(Debug)]
pub struct Watch {
    stream: Option<tonic::Streaming<GameServer>>,
}

impl Watch {
    /// The next update; `None` when the stream ended. In local mode it
    /// waits forever.
    pub async fn next(&mut self) -> Option<Result<GameServer, SdkError>> {
        let Some(stream) = &mut self.stream else {
            return std::future::pending().await;
        };
        match stream.message().await {
            Ok(Some(gs)) => Some(Ok(gs)),
            Ok(None) => None,
            Err(status) => Some(Err(SdkError::Call {
                call: "WatchGameServer",
                status,
            })),
        }
    }
}

/// What local mode answers for a list: empty, by its name.
fn empty_list(name: &str) -> List {
    List {
        name: name.into(),
        ..List::default()
    }
}
