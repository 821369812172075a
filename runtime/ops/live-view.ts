/**
 * The compact live view of `keel demo` (and `keel run --live`): sensor rates, inference
 * latency p50/p99, decisions and faults, refreshed every second. On a terminal it repaints
 * in place; otherwise (or with --json) it prints one line (one JSON object) per second.
 */
import type { Runtime, RuntimeSnapshot } from '../runtime.ts';

/** Options of the live view. */
export interface LiveViewOptions {
  json: boolean;
  tty: boolean;
  write: (line: string) => void;
  title: string;
  intervalMs?: number;
  /** The ledger recorder, when the runtime records a ledger. */
  ledger?: { stats(): { appended: number; buffered: number; checkpoints: number; failures: number; dropped: number } };
  /** The sync client, when the runtime syncs with a fleet. */
  sync?: { stats(): { connected: boolean; delivered: number; backlog: number; inFlight: number; reconnects: number; acks: number; nacks: number; bytesSent: number } };
}

/** Prints runtime snapshots periodically. */
export class LiveView {
  private readonly rt: Runtime;
  private readonly o: LiveViewOptions;
  private timer?: NodeJS.Timeout;
  private prev?: { at: number; snap: RuntimeSnapshot };
  private lines = 0;
  private readonly recent: string[] = [];

  constructor(rt: Runtime, o: LiveViewOptions) {
    this.rt = rt;
    this.o = o;
    rt.on('decision', (d) => this.note(`${new Date(d.t).toISOString().slice(11, 23)} ${d.pipeline}/${d.rule} ${d.state.toUpperCase()} (${fmt(d.value)})`));
    rt.on('fault', (f) => this.note(`${new Date(f.t).toISOString().slice(11, 23)} FAULT ${f.kind}${f.pipeline ? ` [${f.pipeline}]` : ''}: ${f.detail}`));
    rt.on('safe', () => this.note('-> SAFE STATE driven'));
    rt.on('recovered', () => this.note('-> recovered'));
  }

  /** Starts printing every interval. */
  start(): void {
    this.timer = setInterval(() => this.tick(), this.o.intervalMs ?? 1000);
    this.timer.unref();
  }

  /** Stops printing. */
  stop(): void {
    clearInterval(this.timer);
  }

  /** Prints a last summary after shutdown. */
  final(): void {
    this.tick(true);
  }

  private note(line: string): void {
    this.recent.push(line);
    if (this.recent.length > 5) this.recent.shift();
  }

  private tick(final = false): void {
    const snap = this.rt.snapshot();
    const now = performance.now();
    const dt = this.prev ? (now - this.prev.at) / 1000 : snap.uptimeMs / 1000;
    const rate = (name: string, samples: number) => {
      const before = this.prev?.snap.sources.find((s) => s.name === name)?.samples ?? 0;
      return dt > 0 ? (samples - before) / dt : 0;
    };
    const irate = (name: string, n: number) => {
      const before = this.prev?.snap.pipelines.find((p) => p.name === name)?.inferences ?? 0;
      return dt > 0 ? (n - before) / dt : 0;
    };
    if (this.o.json) {
      this.o.write(
        JSON.stringify({
          ...snap,
          ...(this.o.ledger ? { ledger: this.o.ledger.stats() } : {}),
          ...(this.o.sync ? { sync: this.o.sync.stats() } : {}),
          sources: snap.sources.map((s) => ({ ...s, rateHz: round(rate(s.name, s.samples)) })),
          pipelines: snap.pipelines.map((p) => ({ ...p, inferencesPerS: round(irate(p.name, p.inferences)) })),
        }),
      );
    } else {
      const out: string[] = [];
      const ops = this.rt.opsAddress ? `  http://${this.rt.opsAddress}/metrics` : '';
      out.push(`keel ${this.o.title}  up ${(snap.uptimeMs / 1000).toFixed(0)}s  status ${snap.status.toUpperCase()}  faults ${snap.faults}${snap.activeFaults.length ? ` (active: ${snap.activeFaults.join(', ')})` : ''}${final ? '  [stopped]' : ops}`);
      for (const s of snap.sources) {
        out.push(`  source   ${pad(s.name, 12)} ${pad(rate(s.name, s.samples).toFixed(1) + ' Hz', 11)} samples ${s.samples}  dropped ${s.dropped}  reconnects ${s.reconnects}${s.connected ? '' : '  DISCONNECTED'}`);
      }
      for (const p of snap.pipelines) {
        out.push(
          `  pipeline ${pad(p.name, 12)} ${pad(irate(p.name, p.inferences).toFixed(1) + ' inf/s', 11)} p50 ${fmtMs(p.p50Ms)}  p99 ${fmtMs(p.p99Ms)}  dropped ${p.windowsDropped}  decisions ${p.decisions}  actions ${p.actions}${p.active.length ? `  active: ${p.active.join(', ')}` : ''}`,
        );
      }
      const lg = this.o.ledger?.stats();
      if (lg) out.push(`  ledger   ${lg.appended} records  ${lg.checkpoints} checkpoints signed  buffered ${lg.buffered}${lg.failures ? `  failures ${lg.failures}` : ''}${lg.dropped ? `  DROPPED ${lg.dropped}` : ''}`);
      const sy = this.o.sync?.stats();
      if (sy) out.push(`  sync     ${sy.connected ? 'online' : 'OFFLINE'}  delivered ${sy.delivered}  backlog ${sy.backlog}  in flight ${sy.inFlight}  acks ${sy.acks}${sy.nacks ? `  nacks ${sy.nacks}` : ''}  sent ${(sy.bytesSent / 1048576).toFixed(1)} MiB${sy.reconnects ? `  reconnects ${sy.reconnects}` : ''}`);
      if (snap.actuators.length) out.push(`  outputs  ${snap.actuators.map((a) => `${a.name}=${a.value === undefined ? '-' : String(a.value).trim()}`).join('  ')}`);
      for (const r of this.recent) out.push(`  ${r}`);
      if (this.o.tty && this.lines > 0 && !final) this.o.write(`\x1b[${this.lines}A\x1b[J` + out.join('\n'));
      else this.o.write(out.join('\n'));
      this.lines = out.length;
      if (!this.o.tty) this.lines = 0;
    }
    this.prev = { at: now, snap };
  }
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}
function fmtMs(ms: number): string {
  return Number.isNaN(ms) ? '   -   ' : `${ms.toFixed(2)} ms`;
}
function fmt(v: number | undefined): string {
  return typeof v === 'number' ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3)) : String(v);
}
function round(x: number): number {
  return Math.round(x * 10) / 10;
}
