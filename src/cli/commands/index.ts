/** The command table, apart from main.ts so that tests can read the specs without running the CLI. */
import { activationsCommand } from './activations.js';
import { attackCommand } from './attack.js';
import { auditCommand } from './audit.js';
import { benchCommand, benchServeCommand, benchWorkerCommand } from './bench.js';
import { chatCommand } from './chat.js';
import { benchProbesCommand, conceptCommand } from './concept.js';
import type { CliCommand } from './common.js';
import { dataCommand } from './data.js';
import { defendCommand } from './defend.js';
import { controlVectorCommand, directionCommand } from './direction.js';
import { evalCommand } from './eval.js';
import { generateCommand } from './generate.js';
import { infoCommand } from './info.js';
import { monitorCommand } from './monitor.js';
import { pullCommand } from './pull.js';
import { saeCommand } from './sae.js';
import { serveCommand } from './serve.js';
import { trainCommand } from './train.js';

/** In the order `steerguard --help` lists them. */
export const COMMANDS: readonly CliCommand[] = [
  infoCommand,
  generateCommand,
  chatCommand,
  activationsCommand,
  pullCommand,
  dataCommand,
  conceptCommand,
  monitorCommand,
  directionCommand,
  controlVectorCommand,
  evalCommand,
  attackCommand,
  defendCommand,
  saeCommand,
  trainCommand,
  auditCommand,
  serveCommand,
  benchCommand,
  benchServeCommand,
  benchWorkerCommand,
  benchProbesCommand,
];
