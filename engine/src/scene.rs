//! The JSON scene format (specified in `docs/scene-format.md`).
//!
//! Loading happens in two passes. Serde reads the text into file-shaped
//! structs (unknown fields rejected), with `serde_path_to_error` recording
//! where in the document a problem is; then [`validate`] checks meaning
//! (positive sizes, unit rotations, positions inside the bounds, limits) and
//! builds the typed [`Scene`]. Every error names the JSON path, for example
//! `entities[3].collider.half_extents: expected 3 numbers, found 2`.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::components::{BodyKind, ColliderDesc, Shape, Transform, Velocity};
use crate::math::{Aabb, Quat, Vec3};
use crate::physics::{BodyDesc, TriMeshData};

/// The scene format version this build reads.
pub const SCENE_VERSION: u32 = 1;

/// The demo scene shipped in the binary: floor, walls, about 200 dynamic
/// bodies, a ramp and spawn points.
pub const DEMO_SCENE_JSON: &str = include_str!("../scenes/demo.json");

/// The social scene shipped in the binary, what most worlds are: a walled
/// plaza with static geometry (a trimesh stage, benches, a fountain,
/// pillars), 20 dynamic props and ten spawn points.
pub const SOCIAL_SCENE_JSON: &str = include_str!("../scenes/social.json");

/// The names of the scenes shipped in the binary ([`Scene::builtin`]).
pub const BUILTIN_SCENES: [&str; 2] = ["demo", "social"];

/// Limits on what a scene may contain; a scene beyond any of them is refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SceneLimits {
    pub file_bytes_max: u64,
    pub entities_max: u32,
    pub spawn_points_max: u32,
    /// Vertices of one trimesh collider.
    pub trimesh_vertices_max: u32,
    /// Triangles over all trimesh colliders of the scene.
    pub trimesh_triangles_total_max: u32,
    pub name_bytes_max: u32,
    /// Largest absolute coordinate, and largest collider dimension, in metres.
    pub coordinate_abs_max_m: f32,
}

impl Default for SceneLimits {
    fn default() -> Self {
        SceneLimits {
            file_bytes_max: 16 * 1024 * 1024,
            entities_max: 20_000,
            spawn_points_max: 256,
            trimesh_vertices_max: 65_536,
            trimesh_triangles_total_max: 262_144,
            name_bytes_max: 128,
            coordinate_abs_max_m: 100_000.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SceneError {
    #[error("cannot read scene file {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("scene is {bytes} bytes, more than the limit of {max} bytes (file_bytes_max)")]
    TooLarge { bytes: u64, max: u64 },
    #[error("scene is not valid JSON: {message} (line {line}, column {column})")]
    Syntax {
        message: String,
        line: usize,
        column: usize,
    },
    /// A value at `path` is wrong; `line` is 0 when the problem was found
    /// after parsing (then the path alone locates it).
    #[error("{path}: {message}{}", location(*.line, *.column))]
    Invalid {
        path: String,
        message: String,
        line: usize,
        column: usize,
    },
}

fn location(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" (line {line}, column {column})")
    }
}

fn invalid(path: impl fmt::Display, message: impl Into<String>) -> SceneError {
    SceneError::Invalid {
        path: path.to_string(),
        message: message.into(),
        line: 0,
        column: 0,
    }
}

/// A validated scene, ready to load into an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub name: String,
    pub bounds: Aabb,
    pub spawn_points: Vec<Transform>,
    pub entities: Vec<SceneEntity>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SceneEntity {
    pub name: Option<String>,
    pub transform: Transform,
    /// Initial velocity (dynamic bodies only).
    pub velocity: Velocity,
    pub body: Option<SceneBody>,
    /// Replicated to clients (default: bodies that can move).
    pub networked: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SceneBody {
    pub body: BodyDesc,
    pub collider: ColliderDesc,
    pub mesh: Option<TriMeshData>,
}

impl Scene {
    /// Reads and validates a scene file, refusing it before reading when it
    /// is larger than `limits.file_bytes_max`.
    pub fn load(path: &Path, limits: &SceneLimits) -> Result<Scene, SceneError> {
        let io = |source| SceneError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        if bytes > limits.file_bytes_max {
            return Err(SceneError::TooLarge {
                bytes,
                max: limits.file_bytes_max,
            });
        }
        let mut text = Vec::with_capacity(bytes as usize);
        // `take` guards against a file that grows between stat and read.
        file.take(limits.file_bytes_max + 1)
            .read_to_end(&mut text)
            .map_err(io)?;
        Scene::from_json(&text, limits)
    }

    /// Parses and validates scene JSON.
    pub fn from_json(text: &[u8], limits: &SceneLimits) -> Result<Scene, SceneError> {
        if text.len() as u64 > limits.file_bytes_max {
            return Err(SceneError::TooLarge {
                bytes: text.len() as u64,
                max: limits.file_bytes_max,
            });
        }
        let mut de = serde_json::Deserializer::from_slice(text);
        let file: SceneFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            from_json_error(path, e.into_inner())
        })?;
        de.end().map_err(|e| from_json_error(String::new(), e))?;
        validate(file, limits)
    }

    /// The scene of a media instance (members and actions only): no
    /// entity, no spawn point, nothing to simulate.
    pub fn media() -> Scene {
        Scene {
            name: "media".into(),
            bounds: Aabb {
                min: Vec3::new(-1.0, -1.0, -1.0),
                max: Vec3::new(1.0, 1.0, 1.0),
            },
            spawn_points: Vec::new(),
            entities: Vec::new(),
        }
    }

    /// The embedded demo scene.
    pub fn demo() -> Scene {
        embedded(DEMO_SCENE_JSON)
    }

    /// A scene shipped in the binary, by name (see [`BUILTIN_SCENES`]).
    pub fn builtin(name: &str) -> Option<Scene> {
        match name {
            "demo" => Some(embedded(DEMO_SCENE_JSON)),
            "social" => Some(embedded(SOCIAL_SCENE_JSON)),
            _ => None,
        }
    }

    /// Dynamic bodies in the scene.
    pub fn dynamic_bodies(&self) -> usize {
        self.entities
            .iter()
            .filter(|e| {
                e.body
                    .as_ref()
                    .is_some_and(|b| b.body.kind == BodyKind::Dynamic)
            })
            .count()
    }
}

/// Parses a scene embedded in the binary. The embedded files are checked by
/// the `builtin_scenes_load` test, so a failure here is a build defect, not
/// outside input.
fn embedded(json: &str) -> Scene {
    #[allow(clippy::expect_used)]
    Scene::from_json(json.as_bytes(), &SceneLimits::default())
        .expect("the embedded scenes are valid")
}

fn from_json_error(path: String, inner: serde_json::Error) -> SceneError {
    let (line, column) = (inner.line(), inner.column());
    let full = inner.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    match inner.classify() {
        serde_json::error::Category::Data => SceneError::Invalid {
            path: if path.is_empty() || path == "." {
                "(document)".into()
            } else {
                path
            },
            message,
            line,
            column,
        },
        _ => SceneError::Syntax {
            message,
            line,
            column,
        },
    }
}

// ---- file-shaped structs (serde) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SceneFile {
    version: u32,
    #[serde(default)]
    name: Option<String>,
    bounds: BoundsFile,
    #[serde(default)]
    spawn_points: Vec<SpawnFile>,
    entities: Vec<EntityFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BoundsFile {
    min: Num3,
    max: Num3,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnFile {
    position: Num3,
    #[serde(default)]
    yaw_degrees: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityFile {
    #[serde(default)]
    name: Option<String>,
    transform: TransformFile,
    #[serde(default)]
    body: Option<BodyFile>,
    #[serde(default)]
    collider: Option<ColliderFile>,
    #[serde(default)]
    networked: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformFile {
    position: Num3,
    #[serde(default)]
    rotation: Option<Num4>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum BodyKindFile {
    Fixed,
    Dynamic,
    Kinematic,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyFile {
    kind: BodyKindFile,
    #[serde(default)]
    mass: Option<f64>,
    #[serde(default)]
    linear_damping: Option<f64>,
    #[serde(default)]
    angular_damping: Option<f64>,
    #[serde(default)]
    ccd: bool,
    #[serde(default)]
    linear_velocity: Option<Num3>,
    #[serde(default)]
    angular_velocity: Option<Num3>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum ShapeFile {
    Cuboid,
    Ball,
    Capsule,
    Cylinder,
    Trimesh,
}

impl ShapeFile {
    fn name(self) -> &'static str {
        match self {
            ShapeFile::Cuboid => "cuboid",
            ShapeFile::Ball => "ball",
            ShapeFile::Capsule => "capsule",
            ShapeFile::Cylinder => "cylinder",
            ShapeFile::Trimesh => "trimesh",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColliderFile {
    shape: ShapeFile,
    #[serde(default)]
    half_extents: Option<Num3>,
    #[serde(default)]
    radius: Option<f64>,
    #[serde(default)]
    half_height: Option<f64>,
    #[serde(default)]
    vertices: Option<Vec<Num3>>,
    #[serde(default)]
    indices: Option<Vec<Index3>>,
    #[serde(default)]
    friction: Option<f64>,
    #[serde(default)]
    restitution: Option<f64>,
}

/// `[x, y, z]`: exactly three finite numbers that fit an `f32`.
#[derive(Clone, Copy)]
struct Num3([f32; 3]);
/// `[x, y, z, w]`.
#[derive(Clone, Copy)]
struct Num4([f32; 4]);
/// `[a, b, c]` vertex indices.
#[derive(Clone, Copy)]
struct Index3([u32; 3]);

struct FixedArray<const N: usize, T>(std::marker::PhantomData<T>);

trait Element: Sized + Copy + Default {
    const WHAT: &'static str;
    fn read<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<Self>, A::Error>;
}

impl Element for f32 {
    const WHAT: &'static str = "numbers";
    fn read<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<Self>, A::Error> {
        let Some(v) = seq.next_element::<f64>()? else {
            return Ok(None);
        };
        let f = v as f32;
        if !f.is_finite() {
            return Err(de::Error::custom(format!(
                "{v:e} is out of range for a 32-bit float"
            )));
        }
        Ok(Some(f))
    }
}

impl Element for u32 {
    const WHAT: &'static str = "vertex indices";
    fn read<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<Self>, A::Error> {
        seq.next_element::<u32>()
    }
}

impl<'de, const N: usize, T: Element> Visitor<'de> for FixedArray<N, T> {
    type Value = [T; N];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {N} {}", T::WHAT)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[T; N], A::Error> {
        let mut out = [T::default(); N];
        let mut found = 0usize;
        while let Some(v) = T::read(&mut seq)? {
            if found < N {
                out[found] = v;
            }
            found += 1;
        }
        if found != N {
            return Err(de::Error::custom(format!(
                "expected {N} {}, found {found}",
                T::WHAT
            )));
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for Num3 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(FixedArray::<3, f32>(Default::default()))
            .map(Num3)
    }
}

impl<'de> Deserialize<'de> for Num4 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(FixedArray::<4, f32>(Default::default()))
            .map(Num4)
    }
}

impl<'de> Deserialize<'de> for Index3 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(FixedArray::<3, u32>(Default::default()))
            .map(Index3)
    }
}

// ---- validation ----

fn validate(file: SceneFile, limits: &SceneLimits) -> Result<Scene, SceneError> {
    if file.version != SCENE_VERSION {
        return Err(invalid(
            "version",
            format!(
                "unsupported scene version {} (this server reads version {SCENE_VERSION})",
                file.version
            ),
        ));
    }
    let name = file.name.unwrap_or_default();
    check_name("name", &name, limits)?;
    let bounds = Aabb {
        min: Vec3::from(file.bounds.min.0),
        max: Vec3::from(file.bounds.max.0),
    };
    let far = limits.coordinate_abs_max_m;
    for (field, v) in [("min", bounds.min), ("max", bounds.max)] {
        if v.to_array().iter().any(|c| c.abs() > far) {
            return Err(invalid(
                format!("bounds.{field}"),
                format!(
                    "{:?} is farther than {far} m from the origin (coordinate_abs_max_m)",
                    v.to_array()
                ),
            ));
        }
    }
    let size = bounds.size();
    if size.x <= 0.0 || size.y <= 0.0 || size.z <= 0.0 {
        return Err(invalid(
            "bounds",
            "max must be greater than min on every axis",
        ));
    }
    if file.spawn_points.len() > limits.spawn_points_max as usize {
        return Err(invalid(
            "spawn_points",
            format!(
                "{} spawn points, more than the limit of {} (spawn_points_max)",
                file.spawn_points.len(),
                limits.spawn_points_max
            ),
        ));
    }
    if file.entities.len() > limits.entities_max as usize {
        return Err(invalid(
            "entities",
            format!(
                "{} entities, more than the limit of {} (entities_max)",
                file.entities.len(),
                limits.entities_max
            ),
        ));
    }
    let mut spawn_points = Vec::with_capacity(file.spawn_points.len());
    for (i, s) in file.spawn_points.iter().enumerate() {
        let path = format!("spawn_points[{i}]");
        let position = in_bounds(&format!("{path}.position"), s.position, &bounds)?;
        let yaw = finite(&format!("{path}.yaw_degrees"), s.yaw_degrees.unwrap_or(0.0))?;
        spawn_points.push(Transform {
            position,
            rotation: Quat::from_yaw(yaw.to_radians()),
        });
    }
    let mut triangles_total = 0u64;
    let mut entities = Vec::with_capacity(file.entities.len());
    for (i, e) in file.entities.into_iter().enumerate() {
        let path = format!("entities[{i}]");
        entities.push(validate_entity(
            &path,
            e,
            &bounds,
            limits,
            &mut triangles_total,
        )?);
    }
    Ok(Scene {
        name,
        bounds,
        spawn_points,
        entities,
    })
}

fn validate_entity(
    path: &str,
    e: EntityFile,
    bounds: &Aabb,
    limits: &SceneLimits,
    triangles_total: &mut u64,
) -> Result<SceneEntity, SceneError> {
    if let Some(name) = &e.name {
        check_name(&format!("{path}.name"), name, limits)?;
    }
    let position = in_bounds(
        &format!("{path}.transform.position"),
        e.transform.position,
        bounds,
    )?;
    let rotation = match e.transform.rotation {
        None => Quat::IDENTITY,
        Some(q) => unit_quat(&format!("{path}.transform.rotation"), q)?,
    };
    let transform = Transform { position, rotation };
    let (body, velocity) = match (e.body, e.collider) {
        (None, None) => (None, Velocity::default()),
        (Some(_), None) => {
            return Err(invalid(
                format!("{path}.collider"),
                "an entity with a body needs a collider",
            ));
        }
        (b, Some(c)) => {
            let (body, velocity, mass) = match b {
                None => (BodyDesc::new(BodyKind::Fixed), Velocity::default(), None),
                Some(b) => validate_body(&format!("{path}.body"), &b)?,
            };
            let (collider, mesh) = validate_collider(
                &format!("{path}.collider"),
                c,
                mass,
                limits,
                triangles_total,
            )?;
            if matches!(collider.shape, Shape::TriMesh { .. }) && body.kind == BodyKind::Dynamic {
                return Err(invalid(
                    format!("{path}.collider.shape"),
                    "trimesh colliders are only allowed on fixed or kinematic bodies",
                ));
            }
            (
                Some(SceneBody {
                    body,
                    collider,
                    mesh,
                }),
                velocity,
            )
        }
    };
    let movable = body
        .as_ref()
        .is_some_and(|b| b.body.kind != BodyKind::Fixed);
    Ok(SceneEntity {
        name: e.name,
        transform,
        velocity,
        body,
        networked: e.networked.unwrap_or(movable),
    })
}

fn validate_body(
    path: &str,
    b: &BodyFile,
) -> Result<(BodyDesc, Velocity, Option<f32>), SceneError> {
    let kind = match b.kind {
        BodyKindFile::Fixed => BodyKind::Fixed,
        BodyKindFile::Dynamic => BodyKind::Dynamic,
        BodyKindFile::Kinematic => BodyKind::Kinematic,
    };
    let dynamic_only = |field: &str, present: bool| {
        if present && kind != BodyKind::Dynamic {
            Err(invalid(
                format!("{path}.{field}"),
                "only dynamic bodies take this field",
            ))
        } else {
            Ok(())
        }
    };
    dynamic_only("mass", b.mass.is_some())?;
    dynamic_only("linear_velocity", b.linear_velocity.is_some())?;
    dynamic_only("angular_velocity", b.angular_velocity.is_some())?;
    let mass = b
        .mass
        .map(|m| positive(&format!("{path}.mass"), m))
        .transpose()?;
    let linear_damping = non_negative(
        &format!("{path}.linear_damping"),
        b.linear_damping.unwrap_or(0.0),
    )?;
    let angular_damping = non_negative(
        &format!("{path}.angular_damping"),
        b.angular_damping.unwrap_or(0.0),
    )?;
    let velocity = Velocity {
        linear: b.linear_velocity.map_or(Vec3::ZERO, |v| Vec3::from(v.0)),
        angular: b.angular_velocity.map_or(Vec3::ZERO, |v| Vec3::from(v.0)),
    };
    let body = BodyDesc {
        kind,
        linear_damping,
        angular_damping,
        ccd: b.ccd,
    };
    Ok((body, velocity, mass))
}

fn validate_collider(
    path: &str,
    c: ColliderFile,
    mass_kg: Option<f32>,
    limits: &SceneLimits,
    triangles_total: &mut u64,
) -> Result<(ColliderDesc, Option<TriMeshData>), SceneError> {
    let shape_name = c.shape.name();
    let required = |field: &str, present: bool| {
        if present {
            Ok(())
        } else {
            Err(invalid(
                format!("{path}.{field}"),
                format!("required for shape \"{shape_name}\""),
            ))
        }
    };
    let unused = |field: &str, present: bool| {
        if present {
            Err(invalid(
                format!("{path}.{field}"),
                format!("not used by shape \"{shape_name}\""),
            ))
        } else {
            Ok(())
        }
    };
    let uses = |s: ShapeFile| -> [bool; 5] {
        // half_extents, radius, half_height, vertices, indices
        match s {
            ShapeFile::Cuboid => [true, false, false, false, false],
            ShapeFile::Ball => [false, true, false, false, false],
            ShapeFile::Capsule | ShapeFile::Cylinder => [false, true, true, false, false],
            ShapeFile::Trimesh => [false, false, false, true, true],
        }
    };
    let present = [
        c.half_extents.is_some(),
        c.radius.is_some(),
        c.half_height.is_some(),
        c.vertices.is_some(),
        c.indices.is_some(),
    ];
    let fields = [
        "half_extents",
        "radius",
        "half_height",
        "vertices",
        "indices",
    ];
    for ((field, used), here) in fields.iter().zip(uses(c.shape)).zip(present) {
        if used {
            required(field, here)?;
        } else {
            unused(field, here)?;
        }
    }
    let radius = || positive(&format!("{path}.radius"), c.radius.unwrap_or(0.0));
    let half_height = || positive(&format!("{path}.half_height"), c.half_height.unwrap_or(0.0));
    let mut mesh = None;
    let shape = match c.shape {
        ShapeFile::Cuboid => {
            let h = c.half_extents.map_or([0.0; 3], |n| n.0);
            if h.iter().any(|&v| v <= 0.0) {
                return Err(invalid(
                    format!("{path}.half_extents"),
                    format!("every half extent must be positive, found {h:?}"),
                ));
            }
            Shape::Cuboid {
                half_extents: Vec3::from(h),
            }
        }
        ShapeFile::Ball => Shape::Ball { radius: radius()? },
        ShapeFile::Capsule => Shape::Capsule {
            half_height: half_height()?,
            radius: radius()?,
        },
        ShapeFile::Cylinder => Shape::Cylinder {
            half_height: half_height()?,
            radius: radius()?,
        },
        ShapeFile::Trimesh => {
            let m = validate_mesh(path, c.vertices, c.indices, limits, triangles_total)?;
            let shape = Shape::TriMesh {
                vertices: m.vertices.len() as u32,
                triangles: m.indices.len() as u32,
            };
            mesh = Some(m);
            shape
        }
    };
    let largest = match shape {
        Shape::Cuboid { half_extents: h } => h.x.max(h.y).max(h.z),
        Shape::Ball { radius } => radius,
        Shape::Capsule {
            half_height,
            radius,
        }
        | Shape::Cylinder {
            half_height,
            radius,
        } => half_height.max(radius),
        Shape::TriMesh { .. } => mesh.as_ref().map_or(0.0, |m| {
            m.vertices
                .iter()
                .flat_map(|v| v.to_array())
                .fold(0.0f32, |a, c| a.max(c.abs()))
        }),
    };
    if largest > limits.coordinate_abs_max_m {
        return Err(invalid(
            format!("{path}.shape"),
            format!(
                "the shape extends {largest} m, more than {} m (coordinate_abs_max_m)",
                limits.coordinate_abs_max_m
            ),
        ));
    }
    let friction = non_negative(&format!("{path}.friction"), c.friction.unwrap_or(0.5))?;
    let restitution = non_negative(&format!("{path}.restitution"), c.restitution.unwrap_or(0.0))?;
    if restitution > 1.0 {
        return Err(invalid(
            format!("{path}.restitution"),
            format!("must be between 0 and 1, found {restitution}"),
        ));
    }
    let desc = ColliderDesc {
        shape,
        friction,
        restitution,
        mass_kg,
    };
    Ok((desc, mesh))
}

fn validate_mesh(
    path: &str,
    vertices: Option<Vec<Num3>>,
    indices: Option<Vec<Index3>>,
    limits: &SceneLimits,
    triangles_total: &mut u64,
) -> Result<TriMeshData, SceneError> {
    let vertices: Vec<Vec3> = vertices
        .unwrap_or_default()
        .into_iter()
        .map(|v| Vec3::from(v.0))
        .collect();
    let indices: Vec<[u32; 3]> = indices
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.0)
        .collect();
    if vertices.len() < 3 {
        return Err(invalid(
            format!("{path}.vertices"),
            format!(
                "a triangle mesh needs at least 3 vertices, found {}",
                vertices.len()
            ),
        ));
    }
    if vertices.len() > limits.trimesh_vertices_max as usize {
        return Err(invalid(
            format!("{path}.vertices"),
            format!(
                "{} vertices, more than the limit of {} (trimesh_vertices_max)",
                vertices.len(),
                limits.trimesh_vertices_max
            ),
        ));
    }
    if indices.is_empty() {
        return Err(invalid(
            format!("{path}.indices"),
            "a triangle mesh needs at least one triangle",
        ));
    }
    *triangles_total += indices.len() as u64;
    if *triangles_total > u64::from(limits.trimesh_triangles_total_max) {
        return Err(invalid(
            format!("{path}.indices"),
            format!(
                "the scene's trimeshes have more than {} triangles in all (trimesh_triangles_total_max)",
                limits.trimesh_triangles_total_max
            ),
        ));
    }
    for (t, tri) in indices.iter().enumerate() {
        if let Some(&bad) = tri.iter().find(|&&i| i as usize >= vertices.len()) {
            return Err(invalid(
                format!("{path}.indices[{t}]"),
                format!(
                    "vertex index {bad} is out of range (the mesh has {} vertices)",
                    vertices.len()
                ),
            ));
        }
        if tri[0] == tri[1] || tri[1] == tri[2] || tri[0] == tri[2] {
            return Err(invalid(
                format!("{path}.indices[{t}]"),
                format!("degenerate triangle {tri:?} repeats a vertex"),
            ));
        }
    }
    Ok(TriMeshData { vertices, indices })
}

fn check_name(path: &str, name: &str, limits: &SceneLimits) -> Result<(), SceneError> {
    if name.len() > limits.name_bytes_max as usize {
        return Err(invalid(
            path,
            format!(
                "name is {} bytes, more than the limit of {} (name_bytes_max)",
                name.len(),
                limits.name_bytes_max
            ),
        ));
    }
    Ok(())
}

fn in_bounds(path: &str, p: Num3, bounds: &Aabb) -> Result<Vec3, SceneError> {
    let v = Vec3::from(p.0);
    if !bounds.contains(v) {
        return Err(invalid(
            path,
            format!(
                "{:?} is outside the world bounds {:?}..{:?}",
                p.0,
                bounds.min.to_array(),
                bounds.max.to_array()
            ),
        ));
    }
    Ok(v)
}

fn unit_quat(path: &str, q: Num4) -> Result<Quat, SceneError> {
    let quat = Quat::from(q.0);
    let len = quat.length();
    if (len - 1.0).abs() > 1e-3 {
        return Err(invalid(
            path,
            format!(
                "expected a unit quaternion [x, y, z, w], found {:?} (length {len})",
                q.0
            ),
        ));
    }
    Ok(Quat::new(
        quat.x / len,
        quat.y / len,
        quat.z / len,
        quat.w / len,
    ))
}

fn finite(path: &str, v: f64) -> Result<f32, SceneError> {
    let f = v as f32;
    if !f.is_finite() {
        return Err(invalid(
            path,
            format!("{v:e} is out of range for a 32-bit float"),
        ));
    }
    Ok(f)
}

fn positive(path: &str, v: f64) -> Result<f32, SceneError> {
    let f = finite(path, v)?;
    if f <= 0.0 {
        return Err(invalid(path, format!("must be positive, found {v}")));
    }
    Ok(f)
}

fn non_negative(path: &str, v: f64) -> Result<f32, SceneError> {
    let f = finite(path, v)?;
    if f < 0.0 {
        return Err(invalid(path, format!("must not be negative, found {v}")));
    }
    Ok(f)
}
