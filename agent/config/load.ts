import { readFile } from 'node:fs/promises';
import { extname, resolve } from 'node:path';
import YAML from 'yaml';
import type { z } from 'zod';
import { ErrorCodes, WardError } from '../core/errors.js';

/**
 * Reads a YAML or JSON file and validates it against a schema. Every error
 * names the file and, for validation, each offending field, so an operator can
 * fix it without reading code. The result is deep-frozen.
 */
export async function loadConfigFile<S extends z.ZodType>(path: string, schema: S): Promise<z.output<S>> {
  const file = resolve(path);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new WardError(ErrorCodes.CONFIG_NOT_FOUND, `config file ${file} does not exist`, { cause, details: { file } });
    throw new WardError(ErrorCodes.CONFIG_UNREADABLE, `config file ${file} cannot be read (${code ?? 'error'})`, { cause, details: { file } });
  }
  return parseConfig(text, file, schema);
}

export function parseConfig<S extends z.ZodType>(text: string, file: string, schema: S): z.output<S> {
  let data: unknown;
  try {
    if (extname(file).toLowerCase() === '.json') data = JSON.parse(text);
    else data = YAML.parse(text, { prettyErrors: true, uniqueKeys: true });
  } catch (cause) {
    const why = cause instanceof Error ? cause.message.split('\n')[0] : String(cause);
    throw new WardError(ErrorCodes.CONFIG_SYNTAX, `config file ${file} is not valid ${extname(file) === '.json' ? 'JSON' : 'YAML'}: ${why}`, {
      cause,
      details: { file },
    });
  }
  return validateConfig(data, file, schema);
}

export function validateConfig<S extends z.ZodType>(data: unknown, file: string, schema: S): z.output<S> {
  const result = schema.safeParse(data ?? {});
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const keys = (issue as { keys?: string[] }).keys;
      const base = issue.path.map(String).join('.');
      if (issue.code === 'unrecognized_keys' && keys) {
        return keys.map((k) => `${base ? `${base}.` : ''}${k}: unknown field`).join('; ');
      }
      return `${base || '(root)'}: ${issue.message}`;
    });
    throw new WardError(ErrorCodes.CONFIG_INVALID, `config file ${file} is invalid: ${problems.join('; ')}`, {
      details: { file, problems },
    });
  }
  return deepFreeze(result.data);
}

export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
