//! Generators of the shipped scenes, shared by the `generate_scenes` example
//! and the test that checks the committed files are up to date.

use std::fmt::Write as _;

fn r(v: f32) -> String {
    let s = format!("{:.3}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    if s == "-0" { "0".into() } else { s }
}

fn v3(v: [f32; 3]) -> String {
    format!("[{}, {}, {}]", r(v[0]), r(v[1]), r(v[2]))
}

struct Out {
    entities: Vec<String>,
}

impl Out {
    fn fixed_cuboid(&mut self, name: &str, pos: [f32; 3], half: [f32; 3]) {
        self.entities.push(format!(
            r#"{{"name": "{name}", "transform": {{"position": {}}}, "collider": {{"shape": "cuboid", "half_extents": {}, "friction": 0.8}}}}"#,
            v3(pos),
            v3(half)
        ));
    }

    fn dynamic(&mut self, name: &str, pos: [f32; 3], yaw: f32, collider: &str, mass: f32) {
        self.dynamic_body(name, pos, yaw, collider, mass, "");
    }

    /// A ball: rapier has no rolling resistance, so without angular damping
    /// a ball set rolling on a flat floor rolls (and keeps its instance
    /// awake) forever.
    fn ball(&mut self, name: &str, pos: [f32; 3], collider: &str, mass: f32) {
        self.dynamic_body(
            name,
            pos,
            0.0,
            collider,
            mass,
            r#", "angular_damping": 1.5"#,
        );
    }

    fn dynamic_body(
        &mut self,
        name: &str,
        pos: [f32; 3],
        yaw: f32,
        collider: &str,
        mass: f32,
        body_extra: &str,
    ) {
        let (s, c) = (yaw * 0.5).sin_cos();
        self.entities.push(format!(
            r#"{{"name": "{name}", "transform": {{"position": {}, "rotation": [0, {}, 0, {}]}}, "body": {{"kind": "dynamic", "mass": {}{body_extra}}}, "collider": {collider}}}"#,
            v3(pos),
            r(s),
            r(c),
            r(mass)
        ));
    }

    fn walls(&mut self, half_size: f32, height: f32) {
        let h = half_size + 0.5;
        self.fixed_cuboid("floor", [0.0, -0.5, 0.0], [half_size, 0.5, half_size]);
        self.fixed_cuboid("wall_north", [0.0, height, -h], [half_size, height, 0.5]);
        self.fixed_cuboid("wall_south", [0.0, height, h], [half_size, height, 0.5]);
        self.fixed_cuboid("wall_west", [-h, height, 0.0], [0.5, height, half_size]);
        self.fixed_cuboid("wall_east", [h, height, 0.0], [0.5, height, half_size]);
    }
}

fn document(
    name: &str,
    bounds: ([f32; 3], [f32; 3]),
    spawns: &[([f32; 3], f32)],
    out: &Out,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{{");
    let _ = writeln!(s, r#"  "version": 1,"#);
    let _ = writeln!(s, r#"  "name": "{name}","#);
    let _ = writeln!(
        s,
        r#"  "bounds": {{"min": {}, "max": {}}},"#,
        v3(bounds.0),
        v3(bounds.1)
    );
    let _ = writeln!(s, r#"  "spawn_points": ["#);
    for (i, (p, yaw)) in spawns.iter().enumerate() {
        let comma = if i + 1 < spawns.len() { "," } else { "" };
        let _ = writeln!(
            s,
            r#"    {{"position": {}, "yaw_degrees": {}}}{comma}"#,
            v3(*p),
            r(*yaw)
        );
    }
    let _ = writeln!(s, "  ],");
    let _ = writeln!(s, r#"  "entities": ["#);
    for (i, e) in out.entities.iter().enumerate() {
        let comma = if i + 1 < out.entities.len() { "," } else { "" };
        let _ = writeln!(s, "    {e}{comma}");
    }
    let _ = writeln!(s, "  ]");
    let _ = writeln!(s, "}}");
    s
}

/// The demo scene: a walled 100 m floor, a trimesh ramp, two pillars, four
/// pyramids of 50 boxes with five balls dropped on each (220 dynamic bodies) and eight
/// spawn points in a ring facing the centre.
pub fn demo() -> String {
    let mut out = Out {
        entities: Vec::new(),
    };
    out.walls(50.0, 2.0);
    // A wedge ramp 6 m wide rising 2 m over 8 m, as a triangle mesh.
    out.entities.push(
        r#"{"name": "ramp", "transform": {"position": [20, 0, -20]}, "collider": {"shape": "trimesh", "vertices": [[-3, 0, -4], [3, 0, -4], [3, 0, 4], [-3, 0, 4], [-3, 2, 4], [3, 2, 4]], "indices": [[0, 2, 1], [0, 3, 2], [3, 4, 5], [3, 5, 2], [0, 1, 5], [0, 5, 4], [0, 4, 3], [1, 2, 5]], "friction": 0.9}}"#.to_string(),
    );
    out.entities.push(
        r#"{"name": "pillar_capsule", "transform": {"position": [-20, 2.5, -20]}, "collider": {"shape": "capsule", "half_height": 2, "radius": 0.5}}"#.to_string(),
    );
    out.entities.push(
        r#"{"name": "pillar_cylinder", "transform": {"position": [-20, 2, 20]}, "collider": {"shape": "cylinder", "half_height": 2, "radius": 1}}"#.to_string(),
    );
    let box_collider =
        r#"{"shape": "cuboid", "half_extents": [0.25, 0.25, 0.25], "friction": 0.7}"#;
    let centres = [
        [12.0f32, 12.0],
        [-12.0, 12.0],
        [12.0, -12.0],
        [-12.0, -12.0],
    ];
    let mut n = 0;
    for (p, c) in centres.iter().enumerate() {
        // A stepped pyramid of 5x5, 4x4 and 3x3 boxes of 0.5 m: 50 boxes.
        for layer in 0..3 {
            let side = 5 - layer;
            for i in 0..side {
                for k in 0..side {
                    let off = (side as f32 - 1.0) * 0.5 * 0.52;
                    let x = c[0] + i as f32 * 0.52 - off;
                    let z = c[1] + k as f32 * 0.52 - off;
                    let y = 0.25 + layer as f32 * 0.5;
                    out.dynamic(&format!("box_{p}_{n}"), [x, y, z], 0.0, box_collider, 2.0);
                    n += 1;
                }
            }
        }
        // Five balls dropped onto each pyramid from above.
        for b in 0..5 {
            let ball = r#"{"shape": "ball", "radius": 0.3, "restitution": 0.4}"#;
            let x = c[0] + (b as f32 - 2.0) * 0.4;
            out.ball(
                &format!("ball_{p}_{b}"),
                [x, 6.0 + b as f32, c[1]],
                ball,
                1.0,
            );
        }
    }
    let spawns: Vec<([f32; 3], f32)> = (0..8)
        .map(|i| {
            let a = i as f32 * std::f32::consts::TAU / 8.0;
            (
                [8.0 * a.sin(), 0.0, 8.0 * a.cos()],
                (a.to_degrees() + 180.0) % 360.0,
            )
        })
        .collect();
    document(
        "demo",
        ([-60.0, -20.0, -60.0], [60.0, 60.0, 60.0]),
        &spawns,
        &out,
    )
}

/// The stress scene: 5,000 dynamic boxes in a 25 x 25 x 8 grid falling onto
/// a walled 240 m floor.
pub fn stress() -> String {
    let mut out = Out {
        entities: Vec::new(),
    };
    out.walls(120.0, 3.0);
    let collider = r#"{"shape": "cuboid", "half_extents": [0.4, 0.4, 0.4]}"#;
    let mut n = 0;
    for i in 0..25 {
        for k in 0..25 {
            for j in 0..8 {
                let x = (i as f32 - 12.0) * 2.0;
                let z = (k as f32 - 12.0) * 2.0;
                let y = 1.0 + j as f32 * 1.2;
                let yaw = ((i * 7 + k * 13 + j * 3) % 17) as f32 * 0.1;
                out.dynamic(&format!("box_{n}"), [x, y, z], yaw, collider, 1.0);
                n += 1;
            }
        }
    }
    let spawns = [
        ([30.0, 0.0, 30.0], 225.0),
        ([-30.0, 0.0, -30.0], 45.0),
        ([30.0, 0.0, -30.0], 315.0),
        ([-30.0, 0.0, 30.0], 135.0),
    ];
    document(
        "stress",
        ([-150.0, -20.0, -150.0], [150.0, 200.0, 150.0]),
        &spawns,
        &out,
    )
}

/// The social scene, what most worlds are: a walled 40 m plaza, a stepped
/// stage as a triangle mesh, benches, a fountain and a few pillars (all
/// static), 20 dynamic props (crates, balls and chairs resting on the floor)
/// and ten spawn points around the centre.
pub fn social() -> String {
    let mut out = Out {
        entities: Vec::new(),
    };
    out.walls(20.0, 1.5);
    // A two-step stage 8 m wide at the north side, as one triangle mesh.
    out.entities.push(
        r#"{"name": "stage", "transform": {"position": [0, 0, -14]}, "collider": {"shape": "trimesh", "vertices": [[-4, 0, -3], [4, 0, -3], [4, 0, 3], [-4, 0, 3], [-4, 0.4, 3], [4, 0.4, 3], [-4, 0.4, -3], [4, 0.4, -3]], "indices": [[0, 2, 1], [0, 3, 2], [3, 4, 5], [3, 5, 2], [4, 6, 7], [4, 7, 5], [0, 1, 7], [0, 7, 6], [0, 6, 4], [0, 4, 3], [1, 2, 5], [1, 5, 7]], "friction": 0.9}}"#.to_string(),
    );
    out.entities.push(
        r#"{"name": "fountain", "transform": {"position": [0, 0.4, 0]}, "collider": {"shape": "cylinder", "half_height": 0.4, "radius": 1.5}}"#.to_string(),
    );
    for (i, (x, z)) in [(-6.0f32, 6.0f32), (6.0, 6.0), (-6.0, -6.0), (6.0, -6.0)]
        .iter()
        .enumerate()
    {
        out.fixed_cuboid(&format!("bench_{i}"), [*x, 0.25, *z], [1.0, 0.25, 0.3]);
        out.entities.push(format!(
            r#"{{"name": "pillar_{i}", "transform": {{"position": {}}}, "collider": {{"shape": "capsule", "half_height": 1.5, "radius": 0.3}}}}"#,
            v3([x * 2.5, 1.8, z * 2.5])
        ));
    }
    let crate_collider = r#"{"shape": "cuboid", "half_extents": [0.3, 0.3, 0.3], "friction": 0.7}"#;
    let ball = r#"{"shape": "ball", "radius": 0.25, "restitution": 0.3}"#;
    let chair = r#"{"shape": "cuboid", "half_extents": [0.25, 0.45, 0.25], "friction": 0.8}"#;
    for i in 0..20 {
        let a = i as f32 * std::f32::consts::TAU / 20.0;
        let radius = 12.0 + (i % 3) as f32;
        let (x, z) = (radius * a.sin(), radius * a.cos());
        match i % 3 {
            0 => out.dynamic(&format!("crate_{i}"), [x, 0.3, z], a, crate_collider, 4.0),
            1 => out.ball(&format!("ball_{i}"), [x, 0.25, z], ball, 0.5),
            _ => out.dynamic(&format!("chair_{i}"), [x, 0.45, z], a, chair, 6.0),
        }
    }
    let spawns: Vec<([f32; 3], f32)> = (0..10)
        .map(|i| {
            let a = i as f32 * std::f32::consts::TAU / 10.0;
            (
                [5.0 * a.sin(), 0.0, 5.0 * a.cos()],
                (a.to_degrees() + 180.0) % 360.0,
            )
        })
        .collect();
    document(
        "social",
        ([-30.0, -10.0, -30.0], [30.0, 30.0, 30.0]),
        &spawns,
        &out,
    )
}
