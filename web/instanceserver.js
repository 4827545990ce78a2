// The instanceserver browser SDK: an ES module, no bundler needed.
//   import { Client } from './instanceserver.js';
// docs/web-client.md describes it; docs/protocol.md the wire format.

export { Client, Emitter, JoinError, DEFAULTS } from './lib/client.js';
export {
  PROTOCOL_VERSION,
  FRAME_HEADER_LEN,
  Kind,
  ProtocolError,
  SERVER_SENDER,
  decodeServerMessage,
  encodeAction,
  encodeInput,
  encodeOwnershipRequest,
  encodePing,
  encodeSdp,
  isValidTopic,
  SDP_BYTES_MAX,
  readFrame,
} from './lib/protocol.js';
export {
  SnapshotReceiver,
  EntityColumns,
  CLIENT_HISTORY_LEN,
  CLIENT_ENTITIES_MAX,
  dequantizePosition,
  dequantizeRotation,
} from './lib/snapshot.js';
export { Interpolator, InterpolatedView, INTERPOLATION_DELAY_MS } from './lib/interp.js';
