/**
 * Errors raised when a file or an input cannot be used. Every message names the file (or input)
 * and the field that is wrong, so the CLI can print it as is and exit non-zero.
 */
export class SteerguardError extends Error {
  override readonly name: string = 'SteerguardError';
}

/** A model, tokenizer, dataset or artifact file is malformed, truncated or unsupported. */
export class FormatError extends SteerguardError {
  override readonly name = 'FormatError';
  /**
   * @param file path of the offending file
   * @param field the header key, tensor name or column that is wrong (empty when the whole file is)
   * @param problem what is wrong, in plain words
   */
  constructor(
    readonly file: string,
    readonly field: string,
    readonly problem: string,
  ) {
    super(`${file}${field ? `: ${field}` : ''}: ${problem}`);
  }
}

/** An option or argument given by the user is out of range or inconsistent. */
export class OptionError extends SteerguardError {
  override readonly name = 'OptionError';
}
