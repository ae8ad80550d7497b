// Child process for the modbus bench: the simulated PLC on an event loop of its own (on a gateway the PLC is
// another machine). Prints one JSON line {"port": N} once listening; on SIGTERM prints {"requests": N} and exits 0.
import { ModbusSimServer } from '../../plugins/modbus/server.js';

const plc = new ModbusSimServer({ size: 1000 });
for (let i = 0; i < 10; i++) plc.holding[i] = 1000 + i;
const { port } = await plc.listen(0, '127.0.0.1');
process.stdout.write(`${JSON.stringify({ port })}\n`);
process.once('SIGTERM', () => {
  void plc.close().then(() => {
    process.stdout.write(`${JSON.stringify({ requests: plc.requests, invalidFrames: plc.invalidFrames })}\n`);
    process.exit(0);
  });
});
