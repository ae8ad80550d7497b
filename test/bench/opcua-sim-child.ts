// Child process for the telemetry bench: an OPC UA server (node-opcua-server) with TAGS Double variables
// ns=1;s=Bench.Tag001..., on an event loop and in a process of its own, so the server's cost is never counted in
// the agent being measured. Every value changes every CHANGE_MS (more often than the agent's 1 s sampling, so each
// sample sees a new value and every tag reports once a second). SecurityMode None, anonymous.
// argv: <pkiDir> [tags] [changeMs]. Prints one JSON line {"port": N, "endpointUrl": "..."} once listening; on
// SIGTERM shuts down, prints {"updates": N} and exits 0.
import { createServer } from 'node:net';
import { join } from 'node:path';

const [pkiDir, tagsArg, changeArg] = process.argv.slice(2);
if (!pkiDir) throw new Error('usage: opcua-sim-child.ts <pkiDir> [tags] [changeMs]');
const TAGS = Number(tagsArg ?? 100);
const CHANGE_MS = Number(changeArg ?? 250);
const host = '127.0.0.1';

const port = await new Promise<number>((resolve, reject) => {
  const srv = createServer();
  srv.once('error', reject);
  srv.listen(0, host, () => {
    const address = srv.address();
    srv.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
  });
});

const [{ OPCUAServer }, { OPCUACertificateManager }, { MessageSecurityMode, SecurityPolicy, DataType, StatusCodes, Variant }] = await Promise.all([
  import('node-opcua-server'),
  import('node-opcua-certificate-manager'),
  import('node-opcua-client'),
]);

const server = new OPCUAServer({
  port,
  host,
  hostname: host,
  securityModes: [MessageSecurityMode.None],
  securityPolicies: [SecurityPolicy.None],
  allowAnonymous: true,
  serverInfo: { applicationUri: 'urn:ward:bench-tags', productUri: 'urn:ward:bench-tags:product', applicationName: { text: 'Ward bench tags' } },
  buildInfo: { productName: 'Ward bench tags', manufacturerName: 'Ward' },
  serverCertificateManager: new OPCUACertificateManager({
    rootFolder: join(pkiDir, 'server'),
    automaticallyAcceptUnknownCertificate: true,
    disableFileWatchers: true,
  }),
  userCertificateManager: new OPCUACertificateManager({ rootFolder: join(pkiDir, 'user'), disableFileWatchers: true }),
});
await server.initialize();
const addressSpace = server.engine.addressSpace;
if (!addressSpace) throw new Error('no address space after initialize()');
const ns = addressSpace.getOwnNamespace();
const folder = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: 'Bench', nodeId: 's=Bench' });
const variables = Array.from({ length: TAGS }, (_, i) =>
  ns.addVariable({
    componentOf: folder,
    browseName: `Tag${String(i + 1).padStart(3, '0')}`,
    nodeId: `s=Bench.Tag${String(i + 1).padStart(3, '0')}`,
    dataType: 'Double',
    minimumSamplingInterval: 10,
  }),
);
let updates = 0;
const update = () => {
  const now = new Date();
  const t = now.getTime() / 1000;
  variables.forEach((node, i) => {
    // A slow wave per tag, three decimals: a typical process value.
    const value = Math.round((500 + 400 * Math.sin(t / 7 + i) + i) * 1000) / 1000;
    node.setValueFromSource(new Variant({ dataType: DataType.Double, value }), StatusCodes.Good, now);
  });
  updates++;
};
update();
const timer = setInterval(update, CHANGE_MS);
await server.start();
process.stdout.write(`${JSON.stringify({ port, endpointUrl: `opc.tcp://${host}:${port}` })}\n`);

process.once('SIGTERM', () => {
  clearInterval(timer);
  void server.shutdown(0).then(() => {
    process.stdout.write(`${JSON.stringify({ updates })}\n`);
    process.exit(0);
  });
});
