/** The command table, apart from main.ts so that tests can read the specs without running the CLI. */
import { activationsCommand } from './activations.js';
import { benchCommand, benchWorkerCommand } from './bench.js';
import { chatCommand } from './chat.js';
import type { CliCommand } from './common.js';
import { generateCommand } from './generate.js';
import { infoCommand } from './info.js';
import { pullCommand } from './pull.js';

/** In the order `steerguard --help` lists them. */
export const COMMANDS: readonly CliCommand[] = [
  infoCommand,
  generateCommand,
  chatCommand,
  activationsCommand,
  pullCommand,
  benchCommand,
  benchWorkerCommand,
];
