/**
 * Loading prompt sets (CSV, JSON, JSONL) into a uniform list of records.
 *
 * Prompt files routinely hold harmful text, so no error message built here ever quotes a prompt:
 * errors name the file, the column and the line. A CSV file without a header row makes its first
 * prompt look like a column name, so column names are shown only when they all look like names
 * (see {@link looksLikeHeader}); otherwise the message says the file seems to lack a header.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';

import { FormatError, OptionError } from '../formats/errors.js';
import { requireRegularFile } from '../formats/files.js';

/** One prompt of a prompt file. */
export interface PromptRecord {
  /** First 16 hex digits of the SHA-256 of `text`: the same text gets the same id in any file. */
  id: string;
  /** The prompt itself, exactly as in the file (not trimmed). */
  text: string;
  /** 0-based position among the file's data rows. */
  index: number;
  /** Every field of the row as a string (JSON numbers/booleans stringified, objects as JSON, null as ''). */
  fields: Record<string, string>;
}

export interface LoadPromptOptions {
  /** Field holding the prompt; default: the first of {@link DEFAULT_PROMPT_COLUMNS} present. */
  column?: string;
  /** Keep only the first `limit` rows (a positive integer). */
  limit?: number;
  /** Override the format otherwise taken from the extension (or sniffed when unknown). */
  format?: PromptFileFormat;
}

export type PromptFileFormat = 'csv' | 'json' | 'jsonl';

/** Column names tried, in order, when no column is given. */
export const DEFAULT_PROMPT_COLUMNS: readonly string[] = [
  'prompt',
  'instruction',
  'goal',
  'Behavior',
  'text',
  'question',
];

/** The pseudo-column of a JSON array of strings or a JSONL file of strings. */
const STRING_ROW_COLUMN = 'text';

/** A column name: one word of letters, digits, `_`, `-`, `.` (and at most this long). */
const COLUMN_NAME = /^[\p{L}\p{N}_.-]{1,40}$/u;

/** Stable id of a prompt text. */
export function promptId(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex').slice(0, 16);
}

/**
 * SHA-256 (hex) of an ordered list of prompt texts. Each text is length-prefixed so that no two
 * different lists (e.g. ["ab","c"] and ["a","bc"]) can hash alike by concatenation.
 */
export function promptListHash(texts: readonly string[]): string {
  const h = createHash('sha256');
  const len = Buffer.alloc(8);
  for (const t of texts) {
    const bytes = Buffer.from(t, 'utf8');
    len.writeBigUInt64LE(BigInt(bytes.length));
    h.update(len);
    h.update(bytes);
  }
  return h.digest('hex');
}

/** A data row before the prompt column is chosen. `where` locates it in messages ("line 12"). */
interface RawRow {
  where: string;
  fields: Record<string, string>;
  /** Raw value of each field, kept to tell a string prompt from a number/object in JSON. */
  kinds: Record<string, 'string' | 'other'>;
}

interface RawTable {
  columns: string[];
  /** The column names come from the file's first line (CSV), which may be a data row. */
  fromFirstLine: boolean;
  /** Rows are built after the column is chosen, so a wrong column is reported before a ragged row. */
  rows: () => RawRow[];
}

/**
 * Read a prompt file. Throws FormatError for an unreadable, empty or malformed file, a missing or
 * ambiguous column, or an empty prompt; OptionError for a bad `limit`.
 */
export function loadPromptFile(path: string, options: LoadPromptOptions = {}): PromptRecord[] {
  const { limit } = options;
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) {
    throw new OptionError(`--limit must be a positive integer, got ${String(limit)}`);
  }
  const text = readText(path);
  if (text.trim() === '') throw new FormatError(path, '', 'file is empty');
  const format = options.format ?? detectFormat(path, text);
  const table =
    format === 'csv'
      ? csvTable(path, text)
      : format === 'json'
        ? jsonTable(path, text)
        : jsonlTable(path, text);
  if (table.columns.length === 0) throw new FormatError(path, '', 'file has no data rows');
  const column = chooseColumn(path, table, options.column);
  const all = table.rows();
  if (all.length === 0) throw new FormatError(path, '', 'file has no data rows');
  const rows = limit === undefined ? all : all.slice(0, limit);
  return rows.map((row, index) => {
    if (!(column in row.fields)) throw new FormatError(path, column, `${row.where} has no such field`);
    if (row.kinds[column] !== 'string') {
      throw new FormatError(path, column, `${row.where}: value is not a string`);
    }
    const value = row.fields[column];
    if (value.trim() === '') throw new FormatError(path, column, `${row.where}: prompt text is empty`);
    return { id: promptId(value), text: value, index, fields: row.fields };
  });
}

function readText(path: string): string {
  requireRegularFile(path);
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'is a directory, not a file'
          : code === 'EACCES'
            ? 'permission denied'
            : `cannot read (${code ?? String(err)})`;
    throw new FormatError(path, '', why);
  }
  try {
    // The decoder drops a leading UTF-8 BOM, which spreadsheet exports often add.
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new FormatError(path, '', 'is not valid UTF-8 text (save it as UTF-8)');
  }
}

function detectFormat(path: string, text: string): PromptFileFormat {
  const ext = extname(path).toLowerCase();
  if (ext === '.csv') return 'csv';
  if (ext === '.json') return 'json';
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  const first = text.trimStart()[0];
  if (first === '[') return 'json';
  if (first === '{') {
    try {
      JSON.parse(text);
      return 'json';
    } catch {
      return 'jsonl';
    }
  }
  return 'csv';
}

/**
 * Whether `columns` can be shown in a message: every name is empty (an index column) or one
 * short word. Data rows are sentences, so a file read with its first prompt as the header fails
 * this, and its names are not printed.
 */
function looksLikeHeader(columns: readonly string[]): boolean {
  return columns.every((c) => c === '' || COLUMN_NAME.test(c));
}

/** What the file has, for a "no such column" message, without quoting data. */
function describeColumns(columns: readonly string[], fromFirstLine: boolean): string {
  if (fromFirstLine && !looksLikeHeader(columns))
    return (
      `the first line does not look like a header row (its ${columns.length} field${columns.length === 1 ? ' is' : 's are'} ` +
      'not column names), so the file seems to have no header: add a first line naming the columns, e.g. prompt'
    );
  // JSON keys are names, not data, but may be long.
  const shown = columns.map((c) => JSON.stringify(c.length <= 40 ? c : `${c.slice(0, 40)}…`));
  return `the file has ${columns.length === 1 ? 'column' : 'columns'} ${shown.join(', ')}`;
}

function chooseColumn(path: string, table: RawTable, requested: string | undefined): string {
  const { columns } = table;
  if (requested !== undefined) {
    if (columns.includes(requested)) return requested;
    const folded = columns.filter((c) => c.toLowerCase() === requested.toLowerCase());
    if (folded.length === 1) return folded[0];
    throw new FormatError(
      path,
      requested,
      `no such column; ${describeColumns(columns, table.fromFirstLine)}`,
    );
  }
  for (const name of DEFAULT_PROMPT_COLUMNS) if (columns.includes(name)) return name;
  // Case-insensitive matching is a fallback only: 'Question' (TruthfulQA) should work, but if
  // two columns differ only in case nobody can tell which one holds the prompts.
  for (const name of DEFAULT_PROMPT_COLUMNS) {
    const folded = columns.filter((c) => c.toLowerCase() === name.toLowerCase());
    if (folded.length === 1) return folded[0];
    if (folded.length > 1) {
      throw new FormatError(
        path,
        '',
        `cannot tell which column holds the prompts (${folded.map((c) => JSON.stringify(c)).join(', ')}); name one with --column`,
      );
    }
  }
  throw new FormatError(
    path,
    '',
    `no prompt column found (looked for ${DEFAULT_PROMPT_COLUMNS.join(', ')}); ${describeColumns(columns, table.fromFirstLine)}; ` +
      'name the prompt column with --column',
  );
}

// ---------------------------------------------------------------------------------------------
// CSV

/** One parsed CSV record and the 1-based line it starts on. */
export interface CsvRecord {
  line: number;
  values: string[];
}

/**
 * Split CSV text (RFC 4180: comma separator, `"` quoting with `""` escapes, LF or CRLF line ends,
 * quoted fields may span lines) into records. Fully blank lines are skipped. A quote inside an
 * unquoted field is kept as a literal character, as most writers produce such files; text after a
 * closing quote and an unterminated quote are errors. `file` is only used in messages.
 */
export function parseCsv(text: string, file = '<csv>'): CsvRecord[] {
  const records: CsvRecord[] = [];
  const n = text.length;
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  while (i < n) {
    const startLine = line;
    // Blank lines are skipped, as most readers do: hand-edited files often end with a few. In a
    // one-column file an empty prompt must therefore be written "" to be seen (and refused).
    if (text[i] === '\n' || (text[i] === '\r' && text[i + 1] === '\n')) {
      i += text[i] === '\r' ? 2 : 1;
      line++;
      continue;
    }
    const values: string[] = [];
    for (;;) {
      let value = '';
      if (text[i] === '"') {
        const quoteLine = line;
        i++;
        for (;;) {
          const q = text.indexOf('"', i);
          if (q < 0) throw new FormatError(file, '', `line ${quoteLine}: quoted field is never closed`);
          const chunk = text.slice(i, q);
          value += chunk;
          line += countNewlines(chunk);
          if (text[q + 1] === '"') {
            value += '"';
            i = q + 2;
          } else {
            i = q + 1;
            break;
          }
        }
        const c = text[i];
        if (i < n && c !== ',' && c !== '\n' && !(c === '\r' && text[i + 1] === '\n')) {
          throw new FormatError(file, '', `line ${line}: unexpected text after a closing quote`);
        }
      } else {
        let j = i;
        while (j < n) {
          const c = text.charCodeAt(j);
          if (c === 44 /* , */ || c === 10 /* \n */ || (c === 13 /* \r */ && text.charCodeAt(j + 1) === 10)) {
            break;
          }
          j++;
        }
        value = text.slice(i, j);
        i = j;
      }
      values.push(value);
      if (text[i] === ',') {
        i++;
        continue;
      }
      // End of record: newline or end of input.
      if (text[i] === '\r') i += 2;
      else if (text[i] === '\n') i += 1;
      line++;
      break;
    }
    records.push({ line: startLine, values });
  }
  return records;
}

function countNewlines(s: string): number {
  let count = 0;
  for (let k = s.indexOf('\n'); k >= 0; k = s.indexOf('\n', k + 1)) count++;
  return count;
}

function csvTable(path: string, text: string): RawTable {
  const records = parseCsv(text, path);
  if (records.length === 0) throw new FormatError(path, '', 'file is empty');
  const [header, ...data] = records;
  const columns = header.values;
  const seen = new Set<string>();
  for (const c of columns) {
    if (c !== '' && seen.has(c)) {
      if (!looksLikeHeader(columns))
        throw new FormatError(
          path,
          '',
          `line ${header.line} repeats a field; ${describeColumns(columns, true)}`,
        );
      throw new FormatError(path, c, 'column name appears twice in the header row');
    }
    seen.add(c);
  }
  const rows = (): RawRow[] =>
    data.map((rec): RawRow => {
      if (rec.values.length !== columns.length) {
        throw new FormatError(
          path,
          '',
          `line ${rec.line}: row has ${rec.values.length} fields but the header has ${columns.length}`,
        );
      }
      const fields: Record<string, string> = {};
      const kinds: Record<string, 'string' | 'other'> = {};
      columns.forEach((c, k) => {
        fields[c] = rec.values[k];
        kinds[c] = 'string';
      });
      return { where: `line ${rec.line}`, fields, kinds };
    });
  return { columns, fromFirstLine: true, rows };
}

// ---------------------------------------------------------------------------------------------
// JSON / JSONL

function jsonTable(path: string, text: string): RawTable {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    let problem = `invalid JSON${describeJsonError(err, text)}`;
    if (looksLikeJsonl(text)) problem += '; it looks like JSON Lines (one object per line): name it .jsonl';
    throw new FormatError(path, '', problem);
  }
  if (!Array.isArray(data)) {
    throw new FormatError(path, '', `expected a JSON array of objects or strings, found ${jsonKind(data)}`);
  }
  return valuesTable(
    path,
    data.map((value, k) => ({ value, where: `item ${k}` })),
  );
}

function jsonlTable(path: string, text: string): RawTable {
  const items: { value: unknown; where: string }[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, k) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    try {
      items.push({ value: JSON.parse(line), where: `line ${k + 1}` });
    } catch (err) {
      throw new FormatError(path, '', `line ${k + 1}: invalid JSON${describeJsonError(err, line)}`);
    }
  });
  return valuesTable(path, items);
}

/** Rows from parsed JSON values: all objects, or all strings. */
function valuesTable(path: string, items: { value: unknown; where: string }[]): RawTable {
  if (items.length === 0) return { columns: [], fromFirstLine: false, rows: () => [] };
  if (typeof items[0].value === 'string') {
    const odd = items.find((it) => typeof it.value !== 'string');
    if (odd) {
      throw new FormatError(
        path,
        '',
        `${odd.where}: expected a string like the first item, found ${jsonKind(odd.value)}`,
      );
    }
    return {
      columns: [STRING_ROW_COLUMN],
      fromFirstLine: false,
      rows: () =>
        items.map((it) => ({
          where: it.where,
          fields: { [STRING_ROW_COLUMN]: it.value as string },
          kinds: { [STRING_ROW_COLUMN]: 'string' },
        })),
    };
  }
  const columns: string[] = [];
  const known = new Set<string>();
  const rows = items.map((it): RawRow => {
    const v = it.value;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      throw new FormatError(path, '', `${it.where}: expected an object, found ${jsonKind(v)}`);
    }
    const fields: Record<string, string> = {};
    const kinds: Record<string, 'string' | 'other'> = {};
    for (const [key, val] of Object.entries(v as Record<string, unknown>)) {
      if (!known.has(key)) {
        known.add(key);
        columns.push(key);
      }
      fields[key] = stringifyField(val);
      kinds[key] = typeof val === 'string' ? 'string' : 'other';
    }
    return { where: it.where, fields, kinds };
  });
  return { columns, fromFirstLine: false, rows: () => rows };
}

function stringifyField(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
}

function jsonKind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v}`;
}

/**
 * Where and why JSON.parse failed, without V8's excerpt of the input (which would quote a prompt).
 */
function describeJsonError(err: unknown, text: string): string {
  const msg = err instanceof Error ? err.message : '';
  if (/Unexpected end of JSON input/.test(msg)) return ' (the text ends too early)';
  const pos = /at position (\d+)/.exec(msg);
  const reason = /^([^"]*?) in JSON at position/.exec(msg)?.[1];
  const token = /^Unexpected token '(.)'/.exec(msg)?.[1];
  const parts: string[] = [];
  if (pos) {
    const p = Number(pos[1]);
    const before = text.slice(0, p);
    const line = countNewlines(before) + 1;
    const col = p - before.lastIndexOf('\n');
    parts.push(`at line ${line}, column ${col}`);
  }
  if (reason) parts.push(reason.charAt(0).toLowerCase() + reason.slice(1));
  else if (token) parts.push(`unexpected ${JSON.stringify(token)}`);
  return parts.length > 0 ? ` (${parts.join(': ')})` : '';
}

function looksLikeJsonl(text: string): boolean {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  if (lines.length < 2) return false;
  try {
    const first: unknown = JSON.parse(lines[0]);
    return first !== null && typeof first === 'object' && !Array.isArray(first);
  } catch {
    return false;
  }
}
