/**
 * Prompt sets as the methods take them: a set (short name or file, see data/datasets.ts) becomes
 * concept examples (`loadExamples`, for training and calibrating concepts) or evaluation prompts
 * (`loadSets` then `toEvalPrompts`, with the seeded split's part and a limit applied).
 *
 * Loading needs no model, so callers check every set before they load one; what depends on the
 * model (the vocabulary of token-id prompts, the chat template) is checked after. Prompt text
 * never appears in an error, only the set's name and the row.
 */
import type { ConceptExample } from '../concepts/concept.js';
import { loadPromptSet } from '../data/datasets.js';
import { parseSplit, splitItems } from '../data/splits.js';
import { OptionError } from '../formats/errors.js';
import type { Model, Prompt } from '../model/model.js';
import type { EvalPrompt } from './refusal.js';

/** Where sets are found and how their rows are read. */
export interface SetSource {
  /** Folder of the named sets (default: $STEERGUARD_DATA). */
  readonly dataDir?: string;
  /** Prompt column of file sets (a `file#column` suffix wins). */
  readonly column?: string;
  /** The prompt column holds token ids ("1 52 7"), used as they are. */
  readonly tokenIds?: boolean;
}

/** A set's prompts as concept examples. */
export interface LoadedExamples {
  readonly name: string;
  readonly examples: ConceptExample[];
  readonly duplicatesRemoved: number;
}

/**
 * "1 52 7" or "1,52,7" → ids; OptionError naming `where` otherwise (never the text). Ids from
 * `vocabSize` on are refused too when it is given.
 */
export function parseTokenIds(text: string, where: string, vocabSize = Infinity): number[] {
  const parts = text.trim().split(/[\s,]+/);
  const ids = parts.map(Number);
  if (text.trim() === '' || ids.some((x) => !Number.isInteger(x) || x < 0 || x >= vocabSize))
    throw new OptionError(
      `${where}: --token-ids needs whole numbers${Number.isFinite(vocabSize) ? ` in 0..${vocabSize - 1}` : ''} ` +
        'separated by spaces or commas',
    );
  return ids;
}

/** Loads a set as concept examples (text, or token ids with `tokenIds`). No model needed. */
export function loadExamples(spec: string, o: SetSource & { readonly limit?: number }): LoadedExamples {
  const set = loadPromptSet(spec, { dataDir: o.dataDir, column: o.column, limit: o.limit });
  if (set.prompts.length === 0) throw new OptionError(`prompt set ${set.name} is empty`);
  const examples = set.prompts.map((p, i): ConceptExample => ({
    id: p.id,
    prompt: o.tokenIds ? { tokens: parseTokenIds(p.text, `${set.name} row ${i + 1}`) } : p.text,
  }));
  return { name: set.name, examples, duplicatesRemoved: set.duplicatesRemoved };
}

/** Refuses token ids the model's vocabulary does not have. */
export function checkTokenIds(model: Model, sets: readonly LoadedExamples[]): void {
  const V = model.config.vocabSize;
  for (const s of sets)
    s.examples.forEach((e, i) => {
      const p = e.prompt;
      if (typeof p !== 'string' && 'tokens' in p && p.tokens.some((t) => t >= V)) {
        throw new OptionError(`${s.name} row ${i + 1}: token id out of range for a vocabulary of ${V}`);
      }
    });
}

/** Which prompts of each set an evaluation uses. */
export interface SetSelection extends SetSource {
  /** One part of each set's seeded split, or all of it. */
  readonly part: 'all' | 'train' | 'val' | 'test';
  /** Split fractions, "train,val,test" (see data/splits.ts). */
  readonly split: string;
  readonly seed: number;
  /** The first N prompts of each set, after the part is taken. */
  readonly limit?: number;
}

/** A set's prompts with ids and a display name, before they are turned into model prompts. */
export interface LoadedSet {
  readonly name: string;
  readonly harmful: boolean | undefined;
  readonly prompts: readonly { readonly id: string; readonly text: string }[];
}

/** Loads the sets (no model needed), applying the part and the limit. */
export function loadSets(specs: readonly string[], o: SetSelection): LoadedSet[] {
  const fractions = parseSplit(o.split);
  return specs.map((spec) => {
    const set = loadPromptSet(spec, { dataDir: o.dataDir, column: o.column });
    let prompts = [...set.prompts];
    if (o.part !== 'all') prompts = splitItems(prompts, { seed: o.seed, fractions })[o.part];
    if (o.limit !== undefined) prompts = prompts.slice(0, o.limit);
    if (prompts.length === 0) throw new OptionError(`set ${set.name} has no prompts in part '${o.part}'`);
    const name = o.part === 'all' ? set.name : `${set.name}@${o.part}`;
    return { name, harmful: set.harmful, prompts: prompts.map((p) => ({ id: p.id, text: p.text })) };
  });
}

/** Whether the model ships a chat template (base models have none). */
export function hasChatTemplate(model: Model): boolean {
  try {
    return model.tokenizer.chatTemplate !== undefined;
  } catch {
    return false;
  }
}

/** How prompt text becomes model input. */
export interface PromptForm {
  /** The prompt column holds token ids, fed as they are. */
  readonly tokenIds?: boolean;
  /** Wrap text in the model's chat template (ignored with tokenIds). */
  readonly chat: boolean;
  /** System message; needs the chat template. */
  readonly system?: string;
}

/** Model prompts for the loaded sets: chat messages, raw text or token ids. */
export function toEvalPrompts(model: Model, sets: readonly LoadedSet[], o: PromptForm): EvalPrompt[] {
  const chat = o.tokenIds ? false : o.chat;
  if (o.system !== undefined && !chat) throw new OptionError('--system needs the chat template');
  const out: EvalPrompt[] = [];
  for (const set of sets)
    set.prompts.forEach((p, i) => {
      let prompt: Prompt;
      let text = p.text;
      if (o.tokenIds) {
        const tokens = parseTokenIds(p.text, `${set.name} row ${i + 1}`, model.config.vocabSize);
        prompt = { tokens };
        try {
          text = model.tokenizer.decode(tokens);
        } catch {
          text = '';
        }
      } else if (chat) {
        prompt = {
          messages: [
            ...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []),
            { role: 'user', content: p.text },
          ],
        };
      } else prompt = p.text;
      out.push({ id: p.id, set: set.name, text, prompt });
    });
  return out;
}
