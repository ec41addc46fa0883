// Copies the repository's protos/ into this package, so the published package
// carries the codec.proto it loads at run time (see PACKAGED_PROTO_PATH).
const fs = require('node:fs');
const path = require('node:path');

const source = path.resolve(__dirname, '..', '..', '..', 'protos');
const target = path.resolve(__dirname, '..', 'protos');
if (!fs.existsSync(path.join(source, 'codec_grpc', 'v1', 'codec.proto'))) {
  throw new Error(`codec.proto not found under ${source}: pack this package from the repository checkout`);
}
fs.rmSync(target, { recursive: true, force: true });
fs.cpSync(source, target, { recursive: true });
