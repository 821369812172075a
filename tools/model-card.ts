/**
 * Model cards for the shipped models: Markdown with a YAML front-matter block holding the
 * machine-readable facts (file, SHA-256, tensors, keel pipeline, held-out metrics), which
 * the model tests read back. Also writes models/README.md, the index of all cards.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Document, isScalar, parse, visit } from 'yaml';
import type { PipelineSpec } from './features.ts';

/** A model input or output as the card states it. */
export interface CardTensor {
  name: string;
  shape: number[];
  dtype: 'float32';
  description: string;
}

/** A state binding (recurrent models): which output feeds which input on the next run. */
export interface CardState {
  input: string;
  output: string;
  shape: number[];
  initial: number;
}

/** The front matter of a card: everything a test or tool needs to check the model. */
export interface CardFacts {
  name: string;
  file: string;
  sha256: string;
  task: string;
  /** The model input keel feeds with the window (`model.input` in the config). */
  windowInput: string;
  inputs: CardTensor[];
  outputs: CardTensor[];
  state?: CardState[];
  labels?: string[];
  sourceRateHz: number;
  pipeline: PipelineSpec;
  parameters: number;
  training: { script: string; seed: number; heldOutSeed: number; trainSize: number; validationSize: number; heldOutSize: number };
  /** Held-out metrics; the model tests re-measure these on freshly generated data. */
  metrics: Record<string, number>;
}

/** A full card: facts plus the prose sections (Markdown). */
export interface ModelCard {
  facts: CardFacts;
  title: string;
  purpose: string;
  inputs: string;
  outputs: string;
  data: string;
  training: string;
  results: string;
  limitations: string;
  /** Extra YAML for the keel configuration section (defaults to the pipeline from the facts). */
  config?: string;
}

/** SHA-256 of a file, lowercase hex. */
export function sha256File(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** SHA-256 of bytes, lowercase hex. */
export function sha256Bytes(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function tensorTable(ts: CardTensor[]): string {
  return ['| name | shape | dtype | meaning |', '| --- | --- | --- | --- |', ...ts.map((t) => `| \`${t.name}\` | [${t.shape.join(', ')}] | ${t.dtype} | ${t.description} |`)].join('\n');
}

/** Renders a card to Markdown. */
export function renderCard(card: ModelCard): string {
  const f = card.facts;
  const front = compactYaml(f);
  return `---
${front}
---

# ${card.title}

| | |
| --- | --- |
| file | \`${f.file}\` |
| SHA-256 | \`${f.sha256}\` |
| task | ${f.task} |
| parameters | ${f.parameters} |
| ONNX | IR 8, opset 13, float32 |
| reproduce | \`npx tsx ${f.training.script}\` |

## Purpose

${card.purpose.trim()}

## Inputs

${tensorTable(f.inputs)}

${card.inputs.trim()}

## Outputs

${tensorTable(f.outputs)}

${card.outputs.trim()}

## keel configuration

The pipeline settings below produce exactly the tensors the model was trained on (the
training script computes its features with keel's own transform functions). Sample rate of
the source: ${f.sourceRateHz} Hz.

\`\`\`yaml
${(card.config ?? configSnippet(f)).trim()}
\`\`\`

## Training data

${card.data.trim()}

## Training

${card.training.trim()}

## Held-out results

${card.results.trim()}

## Limitations

${card.limitations.trim()}

## Reproduce

\`\`\`sh
npx tsx ${f.training.script}
\`\`\`

The script is deterministic (seeded PRNG, fixed iteration order): it regenerates the data,
retrains, rewrites \`models/${f.file}\`, this card and \`models/README.md\`, and the file's
SHA-256 comes out the same. Before writing, it loads the exported model in onnxruntime-node
and checks its outputs against the TypeScript forward pass on held-out inputs.
\`test/models/models.test.ts\` re-checks the hash, the tensor signature and the metrics
above on data from another seed.
`;
}

/** Reads the front matter of a card. Throws if the card has none. */
export function readCardFacts(file: string): CardFacts {
  const text = readFileSync(file, 'utf8');
  const m = /^---\n([\s\S]*?)\n---\n/.exec(text);
  if (!m) throw new Error(`${file}: no YAML front matter`);
  return parse(m[1]) as CardFacts;
}

/** Writes `<dir>/<name>.md` and refreshes `<dir>/README.md`. */
export function writeCard(dir: string, card: ModelCard): void {
  writeFileSync(path.join(dir, `${card.facts.name}.md`), renderCard(card));
  writeModelIndex(dir);
}

/** Writes models/README.md from every card in `dir`, with each file's actual SHA-256. */
export function writeModelIndex(dir: string): void {
  const cards = readdirSync(dir)
    .filter((f) => f.endsWith('.md') && f !== 'README.md')
    .sort()
    .map((f) => readCardFacts(path.join(dir, f)));
  const rows = cards.map((c) => {
    let hash: string;
    try {
      hash = sha256File(path.join(dir, c.file));
    } catch {
      hash = '(file missing)';
    }
    const io = `${c.inputs.map((t) => `${t.name} [${t.shape.join(',')}]`).join(', ')} → ${c.outputs.map((t) => `${t.name} [${t.shape.join(',')}]`).join(', ')}`;
    const metric = Object.entries(c.metrics)
      .filter(([k]) => ['accuracy', 'auc'].includes(k))
      .map(([k, v]) => `${k} ${v.toFixed(3)}`)
      .join(', ');
    return `| [${c.name}](${c.name}.md) | \`${c.file}\` | ${c.task} | ${io} | ${metric} | \`${hash}\` |`;
  });
  const text = `# Models shipped with keel

Small ONNX models, each trained by a script in \`tools/\` on data that script generates
(no downloaded data, no hand-set weights), each with a model card stating its inputs, the
exact keel pipeline settings that produce them, held-out metrics and limitations. Configs
pin each file by SHA-256 (\`model.sha256\`); keel refuses a file whose hash differs.

| model | file | task | tensors | held-out | SHA-256 |
| --- | --- | --- | --- | --- | --- |
${rows.join('\n')}

Rebuild all of them (deterministic: the hashes above come out the same):

\`\`\`sh
npx tsx tools/train-all.ts
\`\`\`

or one at a time with \`npx tsx tools/train-<name>.ts\`. Example configs using them are in
\`examples/\` (\`vibration.yaml\`, \`obstacle.yaml\`, \`motor-stall.yaml\`).
`;
  writeFileSync(path.join(dir, 'README.md'), text);
}

/** The pipeline section of a keel config for this model (YAML), as cards and examples show it. */
export function configSnippet(f: CardFacts, modelPath = `models/${f.file}`): string {
  const inputs: Record<string, { shape: number[]; dtype: string }> = {};
  // State inputs are described in model.state only (the loader rejects them in inputs).
  for (const t of f.inputs) if (!(f.state ?? []).some((s) => s.input === t.name)) inputs[t.name] = { shape: t.shape, dtype: t.dtype };
  const model: Record<string, unknown> = {
    path: modelPath,
    sha256: f.sha256,
    input: f.windowInput,
    inputs,
    outputs: f.outputs.filter((o) => !(f.state ?? []).some((s) => s.output === o.name)).map((o) => o.name),
  };
  if (f.state) model.state = f.state.map((s) => ({ input: s.input, output: s.output, shape: s.shape, dtype: 'float32', initial: s.initial }));
  // A recurrent state summarizes recent history; after a gap in the stream it is stale.
  if (f.state) model.stateReset = { afterGapMs: 1000, onFault: true };
  return compactYaml({ window: f.pipeline.window, transforms: f.pipeline.transforms, model });
}

/** YAML with lists of scalars (shapes, channel names) on one line, the rest in block style. */
export function compactYaml(value: unknown): string {
  const doc = new Document(value);
  visit(doc, {
    Seq(_, node) {
      if (node.items.every((i) => isScalar(i))) node.flow = true;
    },
  });
  return doc.toString({ lineWidth: 0, flowCollectionPadding: false }).trimEnd();
}
