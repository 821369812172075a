// Docker HEALTHCHECK for keel (Dockerfile.arm64): exit 0 when /healthz answers 200 (status ok
// or degraded), 1 otherwise (503 while starting or in the safe state, refused, or no answer
// within 4 s). Prints the answer, which `docker inspect` keeps in the health log.
// Plain JavaScript on purpose: it runs every 30 s and must not pay tsx's start-up cost.
const url = process.env.KEEL_HEALTH_URL || 'http://127.0.0.1:9464/healthz';
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(4000) });
  const body = (await res.text()).trim();
  console.log(`${res.status} ${body.slice(0, 500)}`);
  process.exit(res.status === 200 ? 0 : 1);
} catch (err) {
  console.log(`${url}: ${err?.cause?.code ?? err?.name ?? 'error'} ${err?.message ?? err}`);
  process.exit(1);
}
