/**
 * The import direction of src/, checked by `npm run lint` (depcruise). The layers are those of
 * docs/ARCHITECTURE.md, lowest first: a module may import from its own layer and the layers before
 * it, never from a later one. Type-only imports count too: a type from a higher layer is a
 * dependency on that layer's design.
 */
const LAYERS = [
  ['formats', 'src/formats/'],
  ['engine', 'src/engine/'],
  ['hooks', 'src/hooks/'],
  ['model', 'src/model/'],
  ['data', 'src/(data|activations)/'],
  ['methods', 'src/(concepts|steering|training|sae)/'],
  ['eval', 'src/eval/'],
  ['audit', 'src/audit/'],
  ['interfaces', 'src/(cli|server)/'],
];

const anchored = (prefix) => `^${prefix}`;

const upward = LAYERS.slice(0, -1).map(([name, from], i) => ({
  name: `${name}-imports-upward`,
  comment: `${name} (${from}) may not import from a later layer: ${LAYERS.slice(i + 1)
    .map(([n]) => n)
    .join(', ')}`,
  severity: 'error',
  from: { path: anchored(from) },
  to: { path: LAYERS.slice(i + 1).map(([, p]) => anchored(p)) },
}));

module.exports = {
  forbidden: [
    ...upward,
    {
      name: 'library-reaches-cli',
      comment: 'src/index.ts is the library: loading it must not load the command line, even indirectly',
      severity: 'error',
      from: { path: '^src/index\\.ts$' },
      to: { path: '^src/(cli|reference)/', reachable: true },
    },
    {
      name: 'reference-outside-cli',
      comment: 'src/reference/ (node-llama-cpp) is for bench and the parity scripts only',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/(cli|reference)/' },
      to: { path: '^src/reference/' },
    },
    {
      name: 'src-imports-tests',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^test/' },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'an import that does not resolve (a typo, a missing dependency)',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      extensions: ['.ts', '.js', '.mjs', '.cjs', '.d.ts'],
    },
  },
};
