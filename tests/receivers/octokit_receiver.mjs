// A receiver built on @octokit/webhooks' own Node middleware, as a GitHub App would
// run it: it verifies X-Hub-Signature-256 and requires X-GitHub-Event and
// X-GitHub-Delivery. Prints "PORT <n>", then one JSON line per event it accepted.
import http from "node:http";
import { Webhooks, createNodeMiddleware } from "@octokit/webhooks";

const webhooks = new Webhooks({ secret: process.env.WEBHOOK_SECRET });
webhooks.onAny(({ id, name, payload }) => {
  process.stdout.write(JSON.stringify({ id, name, payload }) + "\n");
});
const middleware = createNodeMiddleware(webhooks, { path: "/hooks" });
const server = http.createServer(async (request, response) => {
  if (await middleware(request, response)) return;
  response.writeHead(404);
  response.end();
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
