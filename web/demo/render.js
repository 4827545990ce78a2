// A small WebGL renderer for the demo page: boxes, balls, capsules,
// cylinders and triangle meshes, flat colours, one directional light, a
// third-person camera. No library: a few mesh builders and 4x4 matrices.

const VERTEX = `
attribute vec3 position;
attribute vec3 normal;
uniform mat4 model;
uniform mat4 viewProjection;
varying vec3 vNormal;
varying float vDepth;
void main() {
  vec4 world = model * vec4(position, 1.0);
  vNormal = mat3(model) * normal;
  gl_Position = viewProjection * world;
  vDepth = gl_Position.w;
}`;

const FRAGMENT = `
precision mediump float;
uniform vec3 color;
uniform vec3 sky;
varying vec3 vNormal;
varying float vDepth;
void main() {
  vec3 n = normalize(vNormal);
  float light = 0.35 + 0.65 * max(dot(n, normalize(vec3(0.4, 1.0, 0.3))), 0.0);
  float fog = clamp((vDepth - 40.0) / 80.0, 0.0, 0.8);
  gl_FragColor = vec4(mix(color * light, sky, fog), 1.0);
}`;

// ---------------------------------------------------------------- matrices (column-major)

export function perspective(fovY, aspect, near, far) {
  const f = 1 / Math.tan(fovY / 2);
  const nf = 1 / (near - far);
  return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0]);
}

export function lookAt(eye, target, up = [0, 1, 0]) {
  let zx = eye[0] - target[0], zy = eye[1] - target[1], zz = eye[2] - target[2];
  let l = Math.hypot(zx, zy, zz) || 1;
  zx /= l; zy /= l; zz /= l;
  let xx = up[1] * zz - up[2] * zy, xy = up[2] * zx - up[0] * zz, xz = up[0] * zy - up[1] * zx;
  l = Math.hypot(xx, xy, xz) || 1;
  xx /= l; xy /= l; xz /= l;
  const yx = zy * xz - zz * xy, yy = zz * xx - zx * xz, yz = zx * xy - zy * xx;
  return new Float32Array([
    xx, yx, zx, 0,
    xy, yy, zy, 0,
    xz, yz, zz, 0,
    -(xx * eye[0] + xy * eye[1] + xz * eye[2]),
    -(yx * eye[0] + yy * eye[1] + yz * eye[2]),
    -(zx * eye[0] + zy * eye[1] + zz * eye[2]),
    1,
  ]);
}

export function multiply(a, b, out = new Float32Array(16)) {
  for (let c = 0; c < 4; c++) {
    for (let r = 0; r < 4; r++) {
      out[c * 4 + r] = a[r] * b[c * 4] + a[4 + r] * b[c * 4 + 1] + a[8 + r] * b[c * 4 + 2] + a[12 + r] * b[c * 4 + 3];
    }
  }
  return out;
}

/** Translation · rotation (quaternion x, y, z, w) · scale, into `out`. */
export function compose(p, q, s, out) {
  const [x, y, z, w] = q;
  const x2 = x + x, y2 = y + y, z2 = z + z;
  const xx = x * x2, xy = x * y2, xz = x * z2, yy = y * y2, yz = y * z2, zz = z * z2;
  const wx = w * x2, wy = w * y2, wz = w * z2;
  out[0] = (1 - (yy + zz)) * s[0]; out[1] = (xy + wz) * s[0]; out[2] = (xz - wy) * s[0]; out[3] = 0;
  out[4] = (xy - wz) * s[1]; out[5] = (1 - (xx + zz)) * s[1]; out[6] = (yz + wx) * s[1]; out[7] = 0;
  out[8] = (xz + wy) * s[2]; out[9] = (yz - wx) * s[2]; out[10] = (1 - (xx + yy)) * s[2]; out[11] = 0;
  out[12] = p[0]; out[13] = p[1]; out[14] = p[2]; out[15] = 1;
  return out;
}

// ---------------------------------------------------------------- meshes (position + normal, interleaved)

function box() {
  const v = [];
  const faces = [
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[-1, 0, 0], [0, 1, 0], [0, 0, -1]],
    [[0, 1, 0], [0, 0, 1], [1, 0, 0]], [[0, -1, 0], [0, 0, -1], [1, 0, 0]],
    [[0, 0, 1], [1, 0, 0], [0, 1, 0]], [[0, 0, -1], [-1, 0, 0], [0, 1, 0]],
  ];
  for (const [n, u, w] of faces) {
    const corner = (a, b) => [0, 1, 2].map((i) => n[i] + a * u[i] + b * w[i]);
    const quad = [corner(-1, -1), corner(1, -1), corner(1, 1), corner(-1, -1), corner(1, 1), corner(-1, 1)];
    for (const p of quad) v.push(...p, ...n);
  }
  return new Float32Array(v); // a cube of half extent 1
}

/** A sphere of radius 1 whose top and bottom halves are moved ±`stretch` along Y (a capsule when stretch > 0). */
function capsule(stretch, rings = 12, segments = 16) {
  const v = [];
  const point = (i, j) => {
    const t = (i / rings) * Math.PI;
    const p = (j / segments) * 2 * Math.PI;
    const n = [Math.sin(t) * Math.cos(p), Math.cos(t), Math.sin(t) * Math.sin(p)];
    return [n[0], n[1] + (n[1] >= 0 ? stretch : -stretch), n[2], ...n];
  };
  for (let i = 0; i < rings; i++) {
    for (let j = 0; j < segments; j++) {
      const a = point(i, j), b = point(i + 1, j), c = point(i + 1, j + 1), d = point(i, j + 1);
      v.push(...a, ...c, ...b, ...a, ...d, ...c);
    }
  }
  return new Float32Array(v);
}

function cylinder(segments = 20) {
  const v = [];
  for (let j = 0; j < segments; j++) {
    const p0 = (j / segments) * 2 * Math.PI, p1 = ((j + 1) / segments) * 2 * Math.PI;
    const a = [Math.cos(p0), Math.sin(p0)], b = [Math.cos(p1), Math.sin(p1)];
    v.push(a[0], -1, a[1], a[0], 0, a[1], b[0], 1, b[1], b[0], 0, b[1], b[0], -1, b[1], b[0], 0, b[1]);
    v.push(a[0], -1, a[1], a[0], 0, a[1], a[0], 1, a[1], a[0], 0, a[1], b[0], 1, b[1], b[0], 0, b[1]);
    v.push(0, 1, 0, 0, 1, 0, b[0], 1, b[1], 0, 1, 0, a[0], 1, a[1], 0, 1, 0);
    v.push(0, -1, 0, 0, -1, 0, a[0], -1, a[1], 0, -1, 0, b[0], -1, b[1], 0, -1, 0);
  }
  return new Float32Array(v);
}

function trimesh(vertices, indices) {
  const v = [];
  for (const [a, b, c] of indices) {
    const pa = vertices[a], pb = vertices[b], pc = vertices[c];
    const u = [pb[0] - pa[0], pb[1] - pa[1], pb[2] - pa[2]];
    const w = [pc[0] - pa[0], pc[1] - pa[1], pc[2] - pa[2]];
    let n = [u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2], u[0] * w[1] - u[1] * w[0]];
    const l = Math.hypot(...n) || 1;
    n = n.map((x) => x / l);
    v.push(...pa, ...n, ...pb, ...n, ...pc, ...n);
  }
  return new Float32Array(v);
}

// ---------------------------------------------------------------- renderer

export class Renderer {
  /** Throws when the browser has no WebGL. */
  constructor(canvas) {
    const gl = canvas.getContext('webgl', { antialias: true, preserveDrawingBuffer: true });
    if (!gl) throw new Error('this browser has no WebGL');
    this.gl = gl;
    this.canvas = canvas;
    const program = gl.createProgram();
    for (const [type, src] of [[gl.VERTEX_SHADER, VERTEX], [gl.FRAGMENT_SHADER, FRAGMENT]]) {
      const s = gl.createShader(type);
      gl.shaderSource(s, src);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      gl.attachShader(program, s);
    }
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    this.program = program;
    this.loc = {
      position: gl.getAttribLocation(program, 'position'),
      normal: gl.getAttribLocation(program, 'normal'),
      model: gl.getUniformLocation(program, 'model'),
      viewProjection: gl.getUniformLocation(program, 'viewProjection'),
      color: gl.getUniformLocation(program, 'color'),
      sky: gl.getUniformLocation(program, 'sky'),
    };
    this.meshes = new Map();
    this.model = new Float32Array(16);
    this.sky = [0.62, 0.74, 0.86];
    gl.enable(gl.DEPTH_TEST);
    // No culling: scene meshes come with either winding.
  }

  mesh(key, build) {
    let m = this.meshes.get(key);
    if (!m) {
      const data = build();
      const gl = this.gl;
      const buffer = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
      m = { buffer, count: data.length / 6 };
      this.meshes.set(key, m);
    }
    return m;
  }

  /** The mesh and scale of a scene shape ({shape, ...} from the scene description). */
  shapeMesh(shape, key) {
    switch (shape.shape) {
      case 'cuboid':
        return { mesh: this.mesh('box', box), scale: shape.half_extents };
      case 'ball':
        return { mesh: this.mesh('ball', () => capsule(0)), scale: [shape.radius, shape.radius, shape.radius] };
      case 'capsule': {
        const stretch = shape.half_height / shape.radius;
        return { mesh: this.mesh(`capsule:${stretch}`, () => capsule(stretch)), scale: [shape.radius, shape.radius, shape.radius] };
      }
      case 'cylinder':
        return { mesh: this.mesh('cylinder', () => cylinder()), scale: [shape.radius, shape.half_height, shape.radius] };
      case 'trimesh':
        return { mesh: this.mesh(`trimesh:${key}`, () => trimesh(shape.vertices, shape.indices)), scale: [1, 1, 1] };
      default:
        return null;
    }
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.floor(this.canvas.clientWidth * dpr);
    const h = Math.floor(this.canvas.clientHeight * dpr);
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
  }

  /**
   * Draws `items`: {mesh, scale, position, rotation, color}, seen from
   * `eye` looking at `target`.
   */
  draw(items, eye, target) {
    const gl = this.gl;
    this.resize();
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(...this.sky, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.useProgram(this.program);
    const proj = perspective(Math.PI / 3, this.canvas.width / Math.max(1, this.canvas.height), 0.1, 400);
    gl.uniformMatrix4fv(this.loc.viewProjection, false, multiply(proj, lookAt(eye, target)));
    gl.uniform3fv(this.loc.sky, this.sky);
    gl.enableVertexAttribArray(this.loc.position);
    gl.enableVertexAttribArray(this.loc.normal);
    let bound = null;
    for (const it of items) {
      if (it.mesh !== bound) {
        gl.bindBuffer(gl.ARRAY_BUFFER, it.mesh.buffer);
        gl.vertexAttribPointer(this.loc.position, 3, gl.FLOAT, false, 24, 0);
        gl.vertexAttribPointer(this.loc.normal, 3, gl.FLOAT, false, 24, 12);
        bound = it.mesh;
      }
      gl.uniformMatrix4fv(this.loc.model, false, compose(it.position, it.rotation, it.scale, this.model));
      gl.uniform3fv(this.loc.color, it.color);
      gl.drawArrays(gl.TRIANGLES, 0, it.mesh.count);
    }
  }
}
