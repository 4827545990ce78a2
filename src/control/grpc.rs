//! The gRPC control API (`proto/control.proto`), served by tonic on the
//! control thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use state::registry::{InstanceRecord, RegistryError};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use engine::scene::BUILTIN_SCENES;

use super::{ControlError, CreateRequest, SceneSource, Shared, load_scene, lock};

/// The generated protobuf types and service traits.
#[allow(clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("instanceserver.control.v1");
}

/// How long `CreateInstance` waits for the shard to load the scene.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest kick message and ban accepted.
pub const KICK_MESSAGE_BYTES_MAX: usize = 256;
pub const BAN_SECONDS_MAX: u64 = 10 * 365 * 24 * 3600;
/// Attendance records one `ListAttendance` (or HTTP `/attendance`)
/// returns when the request sets no limit.
pub const ATTENDANCE_LIMIT_DEFAULT: u32 = 1_000;
/// Most attendance records one `ListAttendance` returns.
pub const ATTENDANCE_LIMIT_MAX: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct ControlService {
    shared: Shared,
}

impl ControlService {
    pub fn new(shared: Shared) -> Self {
        ControlService { shared }
    }

    /// The service, refusing calls without `authorization: Bearer <token>`
    /// when a token is set (`UNAUTHENTICATED`).
    pub fn server(
        self,
        token: Option<String>,
    ) -> InterceptedService<pb::control_server::ControlServer<ControlService>, BearerCheck> {
        pb::control_server::ControlServer::with_interceptor(self, BearerCheck { token })
    }
}

/// Checks a call's bearer token in constant time.
#[derive(Clone)]
pub struct BearerCheck {
    token: Option<String>,
}

impl std::fmt::Debug for BearerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerCheck")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl tonic::service::Interceptor for BearerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 7235).
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "the control API needs `authorization: Bearer <token>` (grpc.token_file)",
            ))
        }
    }
}

/// Equal bytes, in a time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

fn status(e: ControlError) -> Status {
    match e {
        ControlError::Registry(RegistryError::Unknown(_)) => Status::not_found(e.to_string()),
        ControlError::Registry(RegistryError::Exists(_) | RegistryError::RoomCodeTaken(_)) => {
            Status::already_exists(e.to_string())
        }
        ControlError::Registry(RegistryError::Full(_) | RegistryError::BansFull(_))
        | ControlError::RoomCodesExhausted => Status::resource_exhausted(e.to_string()),
        ControlError::Invalid(_) | ControlError::Scene(_) => {
            Status::invalid_argument(e.to_string())
        }
        ControlError::Draining => Status::failed_precondition(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

fn to_pb(r: &InstanceRecord) -> pb::Instance {
    pb::Instance {
        instance_id: r.id.clone(),
        location_id: r.location_id.clone(),
        shard: r.shard as u32,
        lifecycle: r.lifecycle.label().to_string(),
        users: r.users,
        max_users: r.max_users,
        snapshot_hz: r.snapshot_hz,
        empty_timeout_ms: r.empty_timeout_ms.unwrap_or(0),
        private: r.allowed_users.is_some(),
        allowed_users: r.allowed_users.as_ref().map_or(0, |a| a.len() as u32),
        room_code: r.room_code.clone().unwrap_or_default(),
        kind: r.kind.to_string(),
        entities: r.entities,
        tick_p99_us: r.tick_p99_us,
        labels: r.labels.clone().into_iter().collect(),
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn create_instance(
        &self,
        request: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let r = request.into_inner();
        let kind = match r.kind.as_str() {
            "" | "world" => state::commands::InstanceKind::World,
            "media" if r.scene.is_empty() && r.scene_json.is_empty() => {
                state::commands::InstanceKind::Media
            }
            "media" => {
                return Err(Status::invalid_argument(
                    "a media instance has no scene (scene and scene_json must be empty)",
                ));
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "kind {:?} is neither world nor media",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        let scene = if !r.scene_json.is_empty() {
            SceneSource::Json(r.scene_json)
        } else if r.scene.is_empty() {
            SceneSource::Builtin("demo")
        } else if let Some(name) = BUILTIN_SCENES.iter().find(|&&n| n == r.scene) {
            SceneSource::Builtin(name)
        } else {
            SceneSource::File(r.scene)
        };
        let create = CreateRequest {
            instance_id: Some(r.instance_id).filter(|s| !s.is_empty()),
            kind,
            location_id: r.location_id,
            scene,
            max_users: Some(r.max_users).filter(|&m| m > 0),
            snapshot_hz: Some(r.snapshot_hz).filter(|&hz| hz > 0),
            labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
            empty_timeout_ms: Some(r.empty_timeout_ms).filter(|&ms| ms > 0),
            private: r.private,
            allowed_user_ids: r.allowed_user_ids,
            room_code: Some(r.room_code).filter(|c| !c.is_empty()),
            generate_room_code: r.generate_room_code,
            persistent: r.persistent,
        };
        let config = lock(&self.shared).config.clone();
        let source = create.scene.clone();
        let scene = if kind == state::commands::InstanceKind::Media {
            engine::Scene::media()
        } else {
            tokio::task::spawn_blocking(move || load_scene(&config, &source))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(status)?
        };
        let (id, _shard, started) = lock(&self.shared).create(create, scene).map_err(status)?;
        match tokio::time::timeout(CREATE_TIMEOUT, started).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(message))) => return Err(Status::invalid_argument(message)),
            Ok(Err(_)) | Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "instance {id} did not start in {CREATE_TIMEOUT:?}"
                )));
            }
        }
        let c = lock(&self.shared);
        let record = c
            .registry
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("instance {id} ended at once")))?;
        Ok(Response::new(to_pb(record)))
    }

    async fn get_instance(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let id = request.into_inner().instance_id;
        let c = lock(&self.shared);
        let record = c
            .registry
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("instance {id} does not exist")))?;
        Ok(Response::new(to_pb(record)))
    }

    async fn list_attendance(
        &self,
        request: Request<pb::ListAttendanceRequest>,
    ) -> Result<Response<pb::ListAttendanceResponse>, Status> {
        let r = request.into_inner();
        let c = lock(&self.shared);
        let instance = Some(r.instance_id.as_str()).filter(|s| !s.is_empty());
        let user = Some(r.user_id.as_str()).filter(|s| !s.is_empty());
        if r.limit > ATTENDANCE_LIMIT_MAX {
            return Err(Status::invalid_argument(format!(
                "limit {} is over {ATTENDANCE_LIMIT_MAX}",
                r.limit
            )));
        }
        let limit = if r.limit == 0 {
            ATTENDANCE_LIMIT_DEFAULT
        } else {
            r.limit
        } as usize;
        let records = c
            .attendance
            .newest(instance, user, limit)
            .map(|a| pb::Attendance {
                instance_id: a.instance_id.clone(),
                user_id: a.user_id.clone(),
                session: a.session,
                joined_at_ms: a.joined_at_ms,
                left_at_ms: a.left_at_ms.unwrap_or(0),
                leave_reason: a.leave_reason.unwrap_or("").to_string(),
            })
            .collect();
        Ok(Response::new(pb::ListAttendanceResponse {
            records,
            dropped: c.attendance.dropped(),
        }))
    }

    async fn list_instances(
        &self,
        _request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let c = lock(&self.shared);
        let instances = c.registry.instances().map(to_pb).collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn end_instance(
        &self,
        request: Request<pb::EndInstanceRequest>,
    ) -> Result<Response<pb::EndInstanceResponse>, Status> {
        let id = request.into_inner().instance_id;
        lock(&self.shared).end(&id).map_err(status)?;
        Ok(Response::new(pb::EndInstanceResponse {}))
    }

    async fn kick_user(
        &self,
        request: Request<pb::KickUserRequest>,
    ) -> Result<Response<pb::KickUserResponse>, Status> {
        let r = request.into_inner();
        if r.message.len() > KICK_MESSAGE_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "message over {KICK_MESSAGE_BYTES_MAX} bytes"
            )));
        }
        if r.ban_seconds > BAN_SECONDS_MAX {
            return Err(Status::invalid_argument(format!(
                "ban_seconds over {BAN_SECONDS_MAX}"
            )));
        }
        let ban = (r.ban_seconds > 0).then(|| Duration::from_secs(r.ban_seconds));
        let sessions = lock(&self.shared)
            .kick(&r.instance_id, &r.user_id, ban, r.message, Instant::now())
            .map_err(status)?;
        Ok(Response::new(pb::KickUserResponse { sessions }))
    }

    async fn mute_user(
        &self,
        request: Request<pb::MuteUserRequest>,
    ) -> Result<Response<pb::MuteUserResponse>, Status> {
        let r = request.into_inner();
        if !r.audio && !r.video {
            return Err(Status::invalid_argument(
                "say which tracks: audio, video or both",
            ));
        }
        if r.user_id.is_empty() {
            return Err(Status::invalid_argument("user_id is empty"));
        }
        let sessions = lock(&self.shared)
            .mute(&r.instance_id, &r.user_id, r.audio, r.video, r.muted)
            .map_err(status)?;
        Ok(Response::new(pb::MuteUserResponse { sessions }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let default_grace_ms = lock(&self.shared).config.node.drain_grace_ms;
        let grace_ms = match request.into_inner().grace_ms {
            0 => default_grace_ms,
            ms if ms > crate::config::DURATION_MS_MAX => {
                return Err(Status::invalid_argument(format!(
                    "grace_ms over {} (one week)",
                    crate::config::DURATION_MS_MAX
                )));
            }
            ms => ms,
        };
        let grace = Duration::from_millis(grace_ms);
        let (queues, instances) = lock(&self.shared).begin_drain(grace);
        tokio::task::spawn_blocking(move || super::deliver_drain(&queues, grace))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::DrainResponse {
            instances: instances as u32,
        }))
    }
}
