// One request through the sidecar with Node's own HTTP clients, as a
// connector makes it: fetch (undici) or the http module, with defaults.
//
// Usage: node client.mjs API CASE URL BODY_FILE
//
// API is fetch or http; CASE is get, content-length, chunked or expect.
// Prints "sending" right before the request, then one JSON object:
// {"status", "body", "continues"} ("continues" only for http: the number of
// 'continue' events, one per 100 Continue received; fetch does not expose
// interim responses), or {"unsupported": why} when the client refuses the
// case.
import { readFileSync } from 'node:fs';
import http from 'node:http';

const CHUNK = 64 << 10;
const OCTETS = 'application/octet-stream';

function* chunks(body) {
  for (let i = 0; i < body.length; i += CHUNK) yield body.subarray(i, i + CHUNK);
}

// A stream body: fetch sends it with Transfer-Encoding: chunked. (Node 18
// has no ReadableStream.from.)
function streamOf(body) {
  const it = chunks(body);
  return new ReadableStream({
    pull(controller) {
      const { value, done } = it.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
  });
}

async function viaFetch(kase, url, body) {
  const init = {};
  if (kase !== 'get') {
    init.method = 'POST';
    init.headers = { 'content-type': OCTETS };
    init.body = body;
  }
  if (kase === 'chunked') {
    init.body = streamOf(body);
    init.duplex = 'half'; // required by fetch for a stream body
  }
  if (kase === 'expect') init.headers.expect = '100-continue';
  let res;
  try {
    res = await fetch(url, init);
  } catch (err) {
    if (err.cause?.code === 'UND_ERR_NOT_SUPPORTED') {
      return { unsupported: `fetch refuses the request: ${err.cause.message}` };
    }
    throw err;
  }
  return { status: res.status, body: await res.text() };
}

function viaHttp(kase, url, body) {
  return new Promise((resolve, reject) => {
    const headers = {};
    if (kase !== 'get') headers['content-type'] = OCTETS;
    if (kase === 'content-length' || kase === 'expect') headers['content-length'] = body.length;
    if (kase === 'expect') headers.expect = '100-continue';
    let continues = 0;
    const req = http.request(url, { method: kase === 'get' ? 'GET' : 'POST', headers }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(parts).toString('utf8'), continues }));
      res.on('error', reject);
    });
    req.on('error', reject);
    switch (kase) {
      case 'get':
        req.end();
        break;
      case 'content-length':
        req.end(body);
        break;
      case 'chunked': // no Content-Length: http sends chunks
        for (const c of chunks(body)) req.write(c);
        req.end();
        break;
      case 'expect': // send the headers; the body goes on the first 'continue'
        req.on('continue', () => {
          continues++;
          if (continues === 1) req.end(body);
        });
        req.flushHeaders();
        break;
      default:
        reject(new Error(`unknown case ${kase}`));
    }
  });
}

const [api, kase, url, bodyFile] = process.argv.slice(2);
const body = kase === 'get' ? Buffer.alloc(0) : readFileSync(bodyFile);
const send = { fetch: viaFetch, http: viaHttp }[api];
if (!send) throw new Error(`unknown API ${api}`);
process.stdout.write('sending\n');
const result = await send(kase, url, body);
process.stdout.write(JSON.stringify(result) + '\n');
// Keep-alive sockets would hold the process open; the answer is out.
process.exit(0);
