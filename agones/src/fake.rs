//! A fake Agones SDK server for tests: a real tonic server on loopback that
//! serves both SDK services, records every call, keeps a GameServer with
//! Counters & Lists the way the sidecar does (capacity and duplicate
//! checks), and pushes GameServer changes to watchers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::pb::beta::sdk_server::{Sdk as BetaSdk, SdkServer as BetaServer};
use crate::pb::beta::{
    AddListValueRequest, Counter, GetCounterRequest, GetListRequest, List, RemoveListValueRequest,
    UpdateCounterRequest,
};
use crate::pb::sdk::game_server::status::{CounterStatus, ListStatus};
use crate::pb::sdk::game_server::{ObjectMeta, Status as GsStatus};
use crate::pb::sdk::sdk_server::{Sdk as StableSdk, SdkServer as StableServer};
use crate::pb::sdk::{Duration as PbDuration, Empty, GameServer, KeyValue};

/// The most values an Agones list holds.
pub const LIST_CAPACITY_MAX: i64 = 1000;

/// One call the fake received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Ready,
    Allocate,
    Shutdown,
    Reserve(i64),
    SetLabel(String, String),
    SetAnnotation(String, String),
    GetGameServer,
    WatchGameServer,
    GetCounter(String),
    /// Name, count set, capacity set, diff.
    UpdateCounter(String, Option<i64>, Option<i64>, i64),
    GetList(String),
    AddListValue(String, String),
    RemoveListValue(String, String),
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    health_pings: Vec<Instant>,
}

/// A running fake SDK server.
#[derive(Debug)]
pub struct FakeSdk {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    game_server: watch::Sender<GameServer>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Debug, Clone)]
struct Service {
    state: Arc<Mutex<State>>,
    game_server: watch::Sender<GameServer>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeSdk {
    /// Serves on `127.0.0.1:0` (any free port) with a GameServer in state
    /// `Scheduled` that has the given counters and lists (name, capacity).
    pub async fn start(
        counters: &[(&str, i64)],
        lists: &[(&str, i64)],
    ) -> std::io::Result<FakeSdk> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let status = GsStatus {
            state: "Scheduled".into(),
            address: "127.0.0.1".into(),
            counters: counters
                .iter()
                .map(|&(n, capacity)| (n.to_owned(), CounterStatus { count: 0, capacity }))
                .collect(),
            lists: lists
                .iter()
                .map(|&(n, capacity)| {
                    let capacity = capacity.min(LIST_CAPACITY_MAX);
                    (
                        n.to_owned(),
                        ListStatus {
                            capacity,
                            values: Vec::new(),
                        },
                    )
                })
                .collect(),
            ..GsStatus::default()
        };
        let gs = GameServer {
            object_meta: Some(ObjectMeta {
                name: "fake-gameserver".into(),
                namespace: "default".into(),
                ..ObjectMeta::default()
            }),
            spec: None,
            status: Some(status),
        };
        let (game_server, _) = watch::channel(gs);
        let state = Arc::new(Mutex::new(State::default()));
        let service = Service {
            state: state.clone(),
            game_server: game_server.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(StableServer::new(service.clone()))
            .add_service(BetaServer::new(service));
        tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::warn!("fake Agones SDK server: {e}");
            }
        });
        Ok(FakeSdk {
            addr,
            state,
            game_server,
            stop: Some(stop),
        })
    }

    /// Every call so far, in order (health pings are counted apart).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// When each health ping arrived.
    pub fn health_pings(&self) -> Vec<Instant> {
        lock(&self.state).health_pings.clone()
    }

    /// The GameServer as the fake holds it now.
    pub fn game_server(&self) -> GameServer {
        self.game_server.borrow().clone()
    }

    /// Changes the GameServer and tells every watcher (as Agones does on an
    /// allocation, say).
    pub fn update(&self, change: impl FnOnce(&mut GameServer)) {
        self.game_server.send_modify(change);
    }

    /// Stops serving: open streams end and new connections are refused.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for FakeSdk {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Service {
    fn record(&self, call: Call) {
        lock(&self.state).calls.push(call);
    }

    fn set_state(&self, state: &str) {
        self.game_server.send_modify(|gs| {
            gs.status.get_or_insert_with(GsStatus::default).state = state.into();
        });
    }

    /// Applies `f` to the GameServer's status and tells the watchers when
    /// it succeeds.
    fn modify<T>(&self, f: impl FnOnce(&mut GsStatus) -> Result<T, Status>) -> Result<T, Status> {
        let mut result = Err(Status::internal("not run"));
        self.game_server.send_if_modified(|gs| {
            result = f(gs.status.get_or_insert_with(GsStatus::default));
            result.is_ok()
        });
        result
    }
}

type GameServerStream = Pin<Box<dyn Stream<Item = Result<GameServer, Status>> + Send>>;

#[tonic::async_trait]
impl StableSdk for Service {
    async fn ready(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.record(Call::Ready);
        self.set_state("Ready");
        Ok(Response::new(Empty {}))
    }

    async fn allocate(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.record(Call::Allocate);
        self.set_state("Allocated");
        Ok(Response::new(Empty {}))
    }

    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.record(Call::Shutdown);
        self.set_state("Shutdown");
        Ok(Response::new(Empty {}))
    }

    async fn health(&self, request: Request<Streaming<Empty>>) -> Result<Response<Empty>, Status> {
        let mut pings = request.into_inner();
        while let Some(ping) = pings.next().await {
            ping?;
            lock(&self.state).health_pings.push(Instant::now());
        }
        Ok(Response::new(Empty {}))
    }

    async fn get_game_server(&self, _: Request<Empty>) -> Result<Response<GameServer>, Status> {
        self.record(Call::GetGameServer);
        Ok(Response::new(self.game_server.borrow().clone()))
    }

    type WatchGameServerStream = GameServerStream;

    async fn watch_game_server(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::WatchGameServerStream>, Status> {
        self.record(Call::WatchGameServer);
        let updates = WatchStream::new(self.game_server.subscribe()).map(Ok);
        Ok(Response::new(Box::pin(updates)))
    }

    async fn set_label(&self, request: Request<KeyValue>) -> Result<Response<Empty>, Status> {
        let kv = request.into_inner();
        self.record(Call::SetLabel(kv.key.clone(), kv.value.clone()));
        self.game_server.send_modify(|gs| {
            let meta = gs.object_meta.get_or_insert_with(ObjectMeta::default);
            meta.labels
                .insert(format!("agones.dev/sdk-{}", kv.key), kv.value);
        });
        Ok(Response::new(Empty {}))
    }

    async fn set_annotation(&self, request: Request<KeyValue>) -> Result<Response<Empty>, Status> {
        let kv = request.into_inner();
        self.record(Call::SetAnnotation(kv.key.clone(), kv.value.clone()));
        self.game_server.send_modify(|gs| {
            let meta = gs.object_meta.get_or_insert_with(ObjectMeta::default);
            meta.annotations
                .insert(format!("agones.dev/sdk-{}", kv.key), kv.value);
        });
        Ok(Response::new(Empty {}))
    }

    async fn reserve(&self, request: Request<PbDuration>) -> Result<Response<Empty>, Status> {
        self.record(Call::Reserve(request.into_inner().seconds));
        self.set_state("Reserved");
        Ok(Response::new(Empty {}))
    }
}

fn counter(name: &str, c: &CounterStatus) -> Counter {
    Counter {
        name: name.into(),
        count: c.count,
        capacity: c.capacity,
    }
}

fn list(name: &str, l: &ListStatus) -> List {
    List {
        name: name.into(),
        capacity: l.capacity,
        values: l.values.clone(),
    }
}

#[tonic::async_trait]
impl BetaSdk for Service {
    async fn get_counter(
        &self,
        request: Request<GetCounterRequest>,
    ) -> Result<Response<Counter>, Status> {
        let name = request.into_inner().name;
        self.record(Call::GetCounter(name.clone()));
        let gs = self.game_server.borrow();
        let status = gs.status.as_ref();
        let c = status
            .and_then(|s| s.counters.get(&name))
            .ok_or_else(|| Status::not_found(format!("counter not found: {name}")))?;
        Ok(Response::new(counter(&name, c)))
    }

    async fn update_counter(
        &self,
        request: Request<UpdateCounterRequest>,
    ) -> Result<Response<Counter>, Status> {
        let u = request
            .into_inner()
            .counter_update_request
            .ok_or_else(|| Status::invalid_argument("counterUpdateRequest is required"))?;
        self.record(Call::UpdateCounter(
            u.name.clone(),
            u.count,
            u.capacity,
            u.count_diff,
        ));
        let c = self.modify(|s| {
            let c = s
                .counters
                .get_mut(&u.name)
                .ok_or_else(|| Status::not_found(format!("counter not found: {}", u.name)))?;
            let mut next = *c;
            if let Some(capacity) = u.capacity {
                if capacity < 0 {
                    return Err(Status::out_of_range("capacity must be at least 0"));
                }
                next.capacity = capacity;
            }
            if let Some(count) = u.count {
                next.count = count;
            }
            next.count += u.count_diff;
            if next.count < 0 || next.count > next.capacity {
                return Err(Status::out_of_range(format!(
                    "count {} is out of range 0..={}",
                    next.count, next.capacity
                )));
            }
            *c = next;
            Ok(counter(&u.name, c))
        })?;
        Ok(Response::new(c))
    }

    async fn get_list(&self, request: Request<GetListRequest>) -> Result<Response<List>, Status> {
        let name = request.into_inner().name;
        self.record(Call::GetList(name.clone()));
        let gs = self.game_server.borrow();
        let l = gs
            .status
            .as_ref()
            .and_then(|s| s.lists.get(&name))
            .ok_or_else(|| Status::not_found(format!("list not found: {name}")))?;
        Ok(Response::new(list(&name, l)))
    }

    async fn add_list_value(
        &self,
        request: Request<AddListValueRequest>,
    ) -> Result<Response<List>, Status> {
        let r = request.into_inner();
        self.record(Call::AddListValue(r.name.clone(), r.value.clone()));
        let l = self.modify(|s| {
            let l = s
                .lists
                .get_mut(&r.name)
                .ok_or_else(|| Status::not_found(format!("list not found: {}", r.name)))?;
            if l.values.contains(&r.value) {
                return Err(Status::already_exists(format!(
                    "{} is already in {}",
                    r.value, r.name
                )));
            }
            if l.values.len() as i64 >= l.capacity {
                return Err(Status::out_of_range(format!(
                    "{} is at capacity {}",
                    r.name, l.capacity
                )));
            }
            l.values.push(r.value.clone());
            Ok(list(&r.name, l))
        })?;
        Ok(Response::new(l))
    }

    async fn remove_list_value(
        &self,
        request: Request<RemoveListValueRequest>,
    ) -> Result<Response<List>, Status> {
        let r = request.into_inner();
        self.record(Call::RemoveListValue(r.name.clone(), r.value.clone()));
        let l = self.modify(|s| {
            let l = s
                .lists
                .get_mut(&r.name)
                .ok_or_else(|| Status::not_found(format!("list not found: {}", r.name)))?;
            let i =
                l.values.iter().position(|v| *v == r.value).ok_or_else(|| {
                    Status::not_found(format!("{} is not in {}", r.value, r.name))
                })?;
            l.values.remove(i);
            Ok(list(&r.name, l))
        })?;
        Ok(Response::new(l))
    }
}

/// Counters as a map, for assertions.
pub fn counters(gs: &GameServer) -> BTreeMap<String, (i64, i64)> {
    gs.status
        .as_ref()
        .map(|s| {
            s.counters
                .iter()
                .map(|(n, c)| (n.clone(), (c.count, c.capacity)))
                .collect()
        })
        .unwrap_or_default()
}
