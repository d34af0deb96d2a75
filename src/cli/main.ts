#!/usr/bin/env node
/**
 * The `steerguard` command line: `steerguard <command> [options]`.
 *
 * Exit codes: 0 success, 1 error (`error: ...` on stderr), 2 bad usage (unknown command or option,
 * bad value), 130 interrupted by Ctrl-C.
 */
import { formatCommandList, splitCommand } from './args.js';
import { COMMANDS } from './commands/index.js';
import { packageVersion } from './commands/common.js';
import { runMain } from './output.js';

async function main(argv: readonly string[]): Promise<number> {
  return runMain(argv, async (out) => {
    const first = argv.find((w) => w !== '--json');
    if (first === '--version' || first === '-V' || first === 'version') {
      const version = packageVersion();
      out.result({ version, node: process.version }, `steerguard ${version}`);
      return;
    }
    const visible = COMMANDS.filter((c) => !c.hidden);
    const { command, rest } = splitCommand(
      COMMANDS.map((c) => c.spec),
      argv,
    );
    if (command === undefined) {
      out.result(
        {
          version: packageVersion(),
          commands: visible.map((c) => ({ name: c.spec.name, summary: c.spec.summary })),
        },
        formatCommandList(visible.map((c) => c.spec)),
      );
      return;
    }
    const cmd = COMMANDS.find((c) => c.spec.name === command.name)!;
    await cmd.run(rest, out);
  });
}

await main(process.argv.slice(2));
