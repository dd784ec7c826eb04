const solc = require('solc'); const fs = require('fs');
const src = fs.readFileSync(process.argv[2], 'utf8');
const input = {language: 'Solidity', sources: {'TestToken.sol': {content: src}},
  settings: {optimizer: {enabled: true, runs: 200}, evmVersion: 'paris', outputSelection: {'*': {'*': ['abi', 'evm.bytecode.object']}}}};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
if (out.errors) { for (const e of out.errors) console.error(e.formattedMessage); if (out.errors.some(e => e.severity === 'error')) process.exit(1); }
const res = {compiler: 'solc-js ' + solc.version(), settings: input.settings, contracts: {}};
for (const [name, c] of Object.entries(out.contracts['TestToken.sol'])) res.contracts[name] = {abi: c.abi, bytecode: '0x' + c.evm.bytecode.object};
fs.writeFileSync(process.argv[3], JSON.stringify(res, null, 1) + '\n');
