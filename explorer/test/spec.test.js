// The spec rules of src/spec.ts without a chain or a browser: the file is bundled with esbuild
// into a temporary module and imported. What the chain decodes is checked against the runtime's
// own types (zos-client/metadata/zos-runtime.scale) with polkadot.js, offline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';

async function importSpecModule() {
  const dir = mkdtempSync(join(tmpdir(), 'explorer-spec-'));
  try {
    const outfile = join(dir, 'spec.mjs');
    await build({
      entryPoints: [new URL('../src/spec.ts', import.meta.url).pathname],
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      target: ['es2022'],
      outfile,
      logLevel: 'warning',
    });
    return await import(pathToFileURL(outfile).href);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const spec = await importSpecModule();

// examples/gateway.toml as JSON: a network, a web VM in it, and gateways in front of the VM.
const network = {
  ip_range: '10.20.0.0/16', subnet: '10.20.1.0/24', listen_port: 51820, private_key: `0x${'00'.repeat(80)}`,
};
const vm = {
  image: { root_hash: `0x${'00'.repeat(31)}ff`, source: 'http://127.0.0.1:8420' },
  vcpus: 1, memory_mib: 256, rootfs_mib: 256, networks: [{ network: 'net', ip: '10.20.1.2' }],
};
const site = { host: { name: 'myapp' }, network: 'net', backends: ['10.20.1.2:8080'] };
const shop = {
  host: { fqdn: 'shop.example.org' },
  backends: ['198.51.100.20:443', '[2001:db8::7]:443'],
  tls_passthrough: true,
};

/** The example spec whose `site` gateway is `gateway`, with `more` workloads appended. */
function specText(gateway, ...more) {
  return JSON.stringify({
    version: 0,
    metadata: 'explorer test: gateways',
    workloads: [
      { name: 'net', kind: { network } },
      { name: 'web', kind: { vm } },
      { name: 'site', kind: { gateway } },
      ...more,
    ],
  });
}
const siteWith = (patch) => specText({ ...site, ...patch });
const ruleBroken = (text) => spec.validateSpec(spec.parseSpec(text));

test('a gateway workload parses to the object polkadot.js encodes, passes the rules and counts as a host', () => {
  const parsed = spec.parseSpec(specText(site, { name: 'shop', kind: { gateway: shop } }));
  assert.deepEqual(parsed.workloads[2], {
    name: 'site',
    kind: {
      Gateway: {
        host: { Name: 'myapp' },
        network: 'net',
        backends: [{ V4: { ip: [10, 20, 1, 2], port: 8080 } }],
        tlsPassthrough: false,
      },
    },
  });
  assert.deepEqual(parsed.workloads[3], {
    name: 'shop',
    kind: {
      Gateway: {
        host: { Fqdn: 'shop.example.org' },
        network: null,
        backends: [
          { V4: { ip: [198, 51, 100, 20], port: 443 } },
          { V6: { ip: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7], port: 443 } },
        ],
        tlsPassthrough: true,
      },
    },
  });
  assert.equal(spec.validateSpec(parsed), null);
  const required = spec.requiredResources(parsed);
  assert.equal(required.gatewayHosts, 2);
  assert.equal(required.publicIpv4, 0);
  assert.equal(required.cru, 1n);
  // The chain's JSON (camelCase fields, PascalCase variants) reads the same.
  const camel = spec.parseSpec(specText({ host: { Fqdn: 'shop.example.org' }, backends: ['198.51.100.20:443'], tlsPassthrough: true }));
  assert.deepEqual(camel.workloads[2].kind.Gateway.host, { Fqdn: 'shop.example.org' });
  assert.equal(camel.workloads[2].kind.Gateway.tlsPassthrough, true);
});

test('each broken gateway rule is named by the SpecError the chain returns', () => {
  const net2 = { name: 'net2', kind: { network: { ...network, ip_range: '10.21.0.0/16', subnet: '10.21.1.0/24' } } };
  const cases = [
    ['InvalidGatewayName', siteWith({ host: { name: 'My-App' } })],
    ['InvalidGatewayName', siteWith({ host: { name: 'a.b' } })],
    ['InvalidGatewayName', siteWith({ host: { name: '-myapp' } })],
    ['InvalidGatewayName', siteWith({ host: { name: 'myapp-' } })],
    ['InvalidGatewayName', siteWith({ host: { name: '' } })],
    ['InvalidGatewayFqdn', siteWith({ host: { fqdn: 'localhost' } })],
    ['InvalidGatewayFqdn', siteWith({ host: { fqdn: '-x.example.org' } })],
    ['InvalidGatewayFqdn', siteWith({ host: { fqdn: 'Shop.example.org' } })],
    ['InvalidGatewayFqdn', siteWith({ host: { fqdn: 'shop.example.org.' } })],
    ['InvalidGatewayFqdn', siteWith({ host: { fqdn: 'shop..org' } })],
    ['InvalidGatewayFqdn', siteWith({ host: { fqdn: `${'a'.repeat(64)}.org` } })],
    ['NoGatewayBackends', siteWith({ backends: [] })],
    ['GatewayBackendNotAllowed', siteWith({ backends: ['10.20.1.2:0'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['127.0.0.1:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['10.20.1.2:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['100.64.0.1:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['198.51.100.20:443', '169.254.1.1:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['[::ffff:127.0.0.1]:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['[::1]:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['[fe80::1]:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['[fd00::1]:80'] })],
    ['GatewayBackendNotAllowed', siteWith({ network: null, backends: ['[2001::1]:80'] })],
    ['GatewayBackendOutsideNetwork', siteWith({ backends: ['10.21.1.2:80'] })],
    ['GatewayBackendOutsideNetwork', siteWith({ backends: ['10.20.1.2:80', '[2001:db8::7]:80'] })],
    ['GatewayBackendOutsideNetwork', siteWith({ backends: ['198.51.100.20:443'] })],
    ['UnknownNetwork', siteWith({ network: 'nonet' })],
    ['NotANetwork', siteWith({ network: 'web' })],
    ['DuplicateGatewayHost', specText(site, { name: 'site2', kind: { gateway: { ...site, backends: ['10.20.1.3:80'] } } })],
    ['DuplicateGatewayHost', specText(shop, { name: 'site2', kind: { gateway: { ...shop, tls_passthrough: false } } })],
    // The gateway is checked where it stands among the workloads: before a later broken network.
    ['NoGatewayBackends', specText({ ...site, backends: [] }, { ...net2, kind: { network: { ...net2.kind.network, listen_port: 0 } } })],
    // A name is claimed per spec before the networks are compared.
    ['DuplicateGatewayHost', specText(site, { name: 'site2', kind: { gateway: site } }, { ...net2, kind: { network: { ...network } } })],
  ];
  for (const [expected, text] of cases) assert.equal(ruleBroken(text), expected, text);
  for (const name of ['InvalidGatewayName', 'InvalidGatewayFqdn', 'NoGatewayBackends', 'GatewayBackendNotAllowed', 'GatewayBackendOutsideNetwork', 'DuplicateGatewayHost']) {
    assert.ok(cases.some(([e]) => e === name), `no case for ${name}`);
    assert.ok(spec.SPEC_ERROR_DOCS[name], `no doc line for ${name}`);
  }
});

test('gateways at the edge of the rules pass', () => {
  const cases = [
    siteWith({ host: { name: 'a' } }),
    siteWith({ host: { name: '0' } }),
    siteWith({ host: { name: 'my-app-2' } }),
    siteWith({ host: { name: 'x'.repeat(63) } }),
    siteWith({ host: { fqdn: 'a.b' } }),
    siteWith({ host: { fqdn: 'xn--bcher-kva.example' } }),
    siteWith({ host: { fqdn: [61, 63, 63, 63].map((n) => 'a'.repeat(n)).join('.') } }), // 253 bytes
    siteWith({ network: undefined, backends: ['1.1.1.1:443'] }),
    siteWith({ network: null, backends: ['192.0.2.1:80', '203.0.113.9:65535'] }),
    siteWith({ network: null, backends: ['[2606:4700::1111]:443', '[3fff::1]:80', '[2001:db8::]:80'] }),
    siteWith({ backends: ['10.20.200.9:80'] }), // in the network's range, not only this node's subnet
    siteWith({ backends: Array.from({ length: 8 }, (_, i) => `10.20.1.${i + 2}:80`) }),
    siteWith({ tls_passthrough: true }),
    // One host name each: a name, and FQDNs that differ.
    specText(site, { name: 'shop', kind: { gateway: shop } }, { name: 'shop2', kind: { gateway: { ...shop, host: { fqdn: 'shop.example.com' } } } }),
  ];
  for (const text of cases) assert.equal(ruleBroken(text), null, text);
});

test('a gateway the file format cannot hold is refused before the rules, naming the field', () => {
  const cases = [
    [siteWith({ port: 80 }), /workloads\[2\]\.kind\.gateway: unknown field `port`/],
    [siteWith({ host: { name: 'a', fqdn: 'a.b' } }), /\.host: expected \{ name \} or \{ fqdn \}/],
    [siteWith({ host: { ip: '10.20.1.2' } }), /\.host: expected \{ name \} or \{ fqdn \}/],
    [siteWith({ host: 'myapp' }), /\.host: expected an object/],
    [siteWith({ host: undefined }), /\.host: expected an object/],
    [siteWith({ host: { name: 'x'.repeat(64) } }), /\.host\.name: longer than 63 bytes/],
    [siteWith({ host: { fqdn: `${'a'.repeat(250)}.org` } }), /\.host\.fqdn: longer than 253 bytes/],
    [siteWith({ backends: undefined }), /\.backends: expected a list/],
    [siteWith({ backends: '10.20.1.2:80' }), /\.backends: expected a list/],
    [siteWith({ backends: Array.from({ length: 9 }, (_, i) => `10.20.1.${i + 2}:80`) }), /\.backends: more than 8 entries/],
    [siteWith({ backends: ['10.20.1.2'] }), /\.backends\[0\]: `10\.20\.1\.2` is not host:port/],
    [siteWith({ backends: ['10.20.1.2:65536'] }), /is not host:port/],
    [siteWith({ backends: ['myapp.internal:80'] }), /is not host:port/],
    [siteWith({ backends: ['2001:db8::7:443'] }), /is not host:port/],
    [siteWith({ backends: ['010.20.1.2:80'] }), /is not an IPv4 address/],
    [siteWith({ backends: ['[1::2::3]:80'] }), /is not IPv6/],
    [siteWith({ backends: ['[1:2:3:4::5:6:7:8]:80'] }), /is not IPv6/],
    [siteWith({ backends: ['[1:2:3:4:5:6:7]:80'] }), /is not IPv6/],
    [siteWith({ backends: ['[1.2.3.4]:80'] }), /is not IPv6/],
    [siteWith({ backends: ['[::12345]:80'] }), /is not IPv6/],
    [siteWith({ backends: [80] }), /expected "host:port"/],
    [siteWith({ network: 5 }), /\.network: expected a string/],
    [siteWith({ tls_passthrough: 'yes' }), /\.tls_passthrough: expected true or false/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => spec.parseSpec(text), (e) => e instanceof spec.SpecProblem && e.specError === null && message.test(e.message), text);
  }
  // The address forms Rust reads are read: leading zeros in the port, an embedded dotted quad.
  const read = (backend) => spec.parseSpec(siteWith({ backends: [backend] })).workloads[2].kind.Gateway.backends[0];
  assert.deepEqual(read('10.20.1.2:0080'), { V4: { ip: [10, 20, 1, 2], port: 80 } });
  assert.deepEqual(read('[::ffff:10.20.1.2]:80'), { V6: { ip: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 10, 20, 1, 2], port: 80 } });
  assert.deepEqual(read('[::]:1'), { V6: { ip: Array(16).fill(0), port: 1 } });
});

test('a gateway read from chain shows in the readable form, which reads back to the same spec', async () => {
  const { Metadata, TypeRegistry } = await import('@polkadot/types');
  const registry = new TypeRegistry();
  registry.setMetadata(new Metadata(registry, readFileSync(new URL('../../zos-client/metadata/zos-runtime.scale', import.meta.url))));
  const mapped = { host: { name: 'legacy' }, backends: ['[::ffff:198.51.100.20]:443', '[2001:db8:0:0:1:0:0:7]:443'] };
  const parsed = spec.parseSpec(specText(site, { name: 'shop', kind: { gateway: shop } }, { name: 'old', kind: { gateway: mapped } }));
  const codec = registry.createType('ZosPrimitivesSpecDeploymentSpec', parsed);
  const readable = spec.readableSpec(codec);
  assert.deepEqual(readable.workloads.slice(2).map((w) => w.kind), [
    { gateway: { host: { name: 'myapp' }, network: 'net', backends: ['10.20.1.2:8080'], tls_passthrough: false } },
    { gateway: { host: { fqdn: 'shop.example.org' }, network: null, backends: ['198.51.100.20:443', '[2001:db8::7]:443'], tls_passthrough: true } },
    // As Rust displays IPv6: a mapped IPv4 as a dotted quad, the first longest zero run as `::`.
    { gateway: { host: { name: 'legacy' }, network: null, backends: ['[::ffff:198.51.100.20]:443', '[2001:db8::1:0:0:7]:443'], tls_passthrough: false } },
  ]);
  const again = spec.parseSpec(JSON.stringify(readable));
  assert.deepEqual(again, parsed);
  assert.deepEqual(registry.createType('ZosPrimitivesSpecDeploymentSpec', again).toU8a(), codec.toU8a());
});

// Gateway hosts on the picked node (`gateway_host_keys` and `ensure_gateway_hosts_free` of
// pallets/deployments): the node's domain and who holds each key in deployments.GatewayHosts.
const { blake2AsU8a, blake2AsHex } = await import('@polkadot/util-crypto');
const blake2 = (data) => blake2AsU8a(data, 256);
const domain = 'gw.example.com';
const publicSite = (host) => specText({ host, backends: ['198.51.100.20:443'] });
const parsedSite = (host) => spec.parseSpec(publicSite(host));
/** The `GatewayHosts` entries of `contract`'s spec on `node`, as the chain stores them. */
function held(contract, node, nodeDomain, ...hosts) {
  const holders = new Map();
  for (const host of hosts) {
    const { keys } = spec.gatewayHostKeys(parsedSite(host), node, nodeDomain, blake2);
    for (const k of keys) holders.set(k.key, contract);
  }
  return holders;
}
const hostCheck = (host, node, nodeDomain, holders, contractId = null) =>
  spec.gatewayHostProblem(parsedSite(host), node, nodeDomain, (k) => holders.get(k), contractId, blake2);

test('gateway host keys are the preimages the chain hashes', () => {
  const enc = (s) => new TextEncoder().encode(s);
  const name = spec.gatewayHostKeys(parsedSite({ name: 'myapp' }), 1, 'GW.Example.com', blake2).keys[0];
  assert.deepEqual(name, { workload: 'site', host: 'myapp.gw.example.com', key: blake2AsHex(enc('zos/gw-name/myapp.gw.example.com'), 256), perNode: false });
  // An FQDN: `zos/gw-fqdn/`, the node id as u32 little-endian, the FQDN.
  const fqdn = spec.gatewayHostPreimage(0x01020304, { Fqdn: 'shop.example.org' }, null);
  assert.deepEqual([...fqdn.preimage], [...enc('zos/gw-fqdn/'), 4, 3, 2, 1, ...enc('shop.example.org')]);
  // A name: one key per domain, whichever node; an FQDN: one key per node.
  const key = (host, node, d) => spec.gatewayHostKeys(parsedSite(host), node, d, blake2).keys[0].key;
  assert.equal(key({ name: 'myapp' }, 1, 'GW.Example.com'), key({ name: 'myapp' }, 2, domain));
  assert.notEqual(key({ fqdn: 'shop.example.org' }, 1, null), key({ fqdn: 'shop.example.org' }, 2, null));
  assert.equal(key({ fqdn: 'shop.example.org' }, 1, null), key({ fqdn: 'shop.example.org' }, 1, domain));
  // An FQDN at or under the node's domain is keyed as the name it spells, on any node.
  assert.equal(key({ fqdn: 'myapp.gw.example.com' }, 7, 'GW.Example.com'), key({ name: 'myapp' }, 1, domain));
  assert.equal(spec.gatewayHostPreimage(7, { Fqdn: domain }, domain).perNode, false);
  // Only after a dot: `xgw.example.com` is not under `gw.example.com`.
  assert.equal(spec.gatewayHostPreimage(7, { Fqdn: 'xgw.example.com' }, domain).perNode, true);
});

test('a gateway name on a node without a domain is NodeHasNoGatewayDomain', () => {
  const problem = hostCheck({ name: 'myapp' }, 3, null, new Map());
  assert.equal(problem.error, 'NodeHasNoGatewayDomain');
  assert.match(problem.message, /`myapp`/);
  assert.match(problem.message, /node 3/);
  // An FQDN needs no domain.
  assert.equal(hostCheck({ fqdn: 'c.example.net' }, 3, null, new Map()), null);
  // The first gateway that cannot be keyed wins, before any holder is looked at.
  const mixed = spec.parseSpec(specText({ host: { fqdn: 'c.example.net' }, backends: ['198.51.100.20:443'] }, { name: 'site2', kind: { gateway: { host: { name: 'myapp' }, backends: ['198.51.100.20:443'] } } }));
  assert.equal(spec.gatewayHostProblem(mixed, 3, null, () => 9, null, blake2).error, 'NodeHasNoGatewayDomain');
});

test('a host another contract holds is GatewayHostTaken, naming the host and the holder', () => {
  const holders = held(4, 1, domain, { name: 'myapp' }, { fqdn: 'shop.example.org' });
  // The same name under the same domain, even on another node serving it.
  const taken = hostCheck({ name: 'myapp' }, 2, domain, holders);
  assert.equal(taken.error, 'GatewayHostTaken');
  assert.match(taken.message, /`myapp\.gw\.example\.com`/);
  assert.match(taken.message, /another contract, contract 4/);
  // The domain compares lowercased, as the chain stores the key.
  assert.equal(hostCheck({ name: 'myapp' }, 2, 'GW.EXAMPLE.COM', holders)?.error, 'GatewayHostTaken');
  // The FQDN a held name spells under the node's domain: no takeover by FQDN.
  const spelled = hostCheck({ fqdn: 'myapp.gw.example.com' }, 2, domain, holders);
  assert.equal(spelled?.error, 'GatewayHostTaken');
  assert.match(spelled.message, /`myapp\.gw\.example\.com`.*contract 4/);
  // An FQDN on the node that serves it.
  assert.equal(hostCheck({ fqdn: 'shop.example.org' }, 1, domain, holders)?.error, 'GatewayHostTaken');
  // A new contract (create: no id yet) and another contract's update alike.
  assert.equal(hostCheck({ name: 'myapp' }, 1, domain, holders, 5)?.error, 'GatewayHostTaken');
});

test('a contract keeps its own hosts, and free hosts pass', () => {
  const holders = held(4, 1, domain, { name: 'myapp' }, { fqdn: 'shop.example.org' });
  // An update of contract 4 serving what it already holds.
  assert.equal(hostCheck({ name: 'myapp' }, 1, domain, holders, 4), null);
  assert.equal(hostCheck({ fqdn: 'myapp.gw.example.com' }, 1, domain, holders, 4), null);
  assert.equal(hostCheck({ fqdn: 'shop.example.org' }, 1, domain, holders, 4), null);
  // Free: another name, the name under another domain, the FQDN on another node.
  assert.equal(hostCheck({ name: 'other' }, 1, domain, holders), null);
  assert.equal(hostCheck({ name: 'myapp' }, 1, 'gw2.example.com', holders), null);
  assert.equal(hostCheck({ fqdn: 'shop.example.org' }, 2, domain, holders), null);
  assert.equal(hostCheck({ fqdn: 'myapp.gw.example.com' }, 2, 'gw2.example.com', holders), null);
  // A spec without gateways needs neither a domain nor a lookup.
  assert.equal(spec.gatewayHostProblem(spec.parseSpec(JSON.stringify(spec.EXAMPLE_SPEC)), 3, null, () => 9, null, blake2), null);
});

test('what only the node domain breaks is the InvalidSpec the chain returns', () => {
  // A name and the FQDN it spells on this node: one host twice.
  const twice = spec.parseSpec(specText({ host: { name: 'twice' }, backends: ['198.51.100.20:443'] }, { name: 'site2', kind: { gateway: { host: { fqdn: 'twice.gw.example.com' }, backends: ['198.51.100.20:443'] } } }));
  assert.equal(spec.validateSpec(twice), null);
  const dup = spec.gatewayHostProblem(twice, 1, domain, () => null, null, blake2);
  assert.deepEqual([dup.error, dup.specError], ['InvalidSpec', 'DuplicateGatewayHost']);
  // Under another domain they are two hosts.
  assert.equal(spec.gatewayHostProblem(twice, 1, 'gw2.example.com', () => null, null, blake2), null);
  // `<name>.<domain>` longer than a DNS name may be.
  const long = [60, 60, 60, 60].map((n, i) => 'abcd'[i].repeat(n)).join('.');
  const tooLong = hostCheck({ name: 'x'.repeat(20) }, 1, long, new Map());
  assert.deepEqual([tooLong.error, tooLong.specError], ['InvalidSpec', 'InvalidGatewayName']);
});

test('the gateway host errors are the runtime\'s deployments errors', async () => {
  const { Metadata, TypeRegistry } = await import('@polkadot/types');
  const registry = new TypeRegistry();
  const metadata = new Metadata(registry, readFileSync(new URL('../../zos-client/metadata/zos-runtime.scale', import.meta.url)));
  registry.setMetadata(metadata);
  const pallet = metadata.asLatest.pallets.find((p) => p.name.toString() === 'Deployments');
  const errors = registry.lookup.getSiType(pallet.errors.unwrap().type).def.asVariant.variants.map((v) => v.name.toString());
  for (const name of ['NodeHasNoGatewayDomain', 'GatewayHostTaken', 'InvalidSpec']) assert.ok(errors.includes(name), name);
  // GatewayHosts is keyed by the 32 bytes themselves (Identity), as the page reads it.
  const hosts = pallet.storage.unwrap().items.find((i) => i.name.toString() === 'GatewayHosts');
  assert.deepEqual(hosts.type.asMap.hashers.map((h) => h.toString()), ['Identity']);
});

// Health checks (`HealthCheckSpec`): a probe of one VM of the spec, a workload of its own. The
// example of primitives/src/spec/tests.rs: an HTTP check of the web VM.
const webHealth = {
  vm: 'web', probe: { http: { port: 80, path: '/healthz' } },
  interval_secs: 10, timeout_secs: 2, retries: 3, start_period_secs: 60, on_unhealthy: 'restart',
};
/** The network and web VM of the gateway example, the health check `check` of it, then `more`. */
function healthText(check, ...more) {
  return JSON.stringify({
    version: 0,
    metadata: 'explorer test: health checks',
    workloads: [
      { name: 'net', kind: { network } },
      { name: 'web', kind: { vm } },
      { name: 'web-health', kind: { health_check: check } },
      ...more,
    ],
  });
}
const healthWith = (patch) => healthText({ ...webHealth, ...patch });
const probeWith = (probe) => healthWith({ probe });
const parsedCheck = (text) => spec.parseSpec(text).workloads[2].kind.HealthCheck;

test('a health check parses to the object polkadot.js encodes, passes the rules and reserves nothing', () => {
  const parsed = spec.parseSpec(healthText(webHealth));
  assert.deepEqual(parsed.workloads[2], {
    name: 'web-health',
    kind: {
      HealthCheck: {
        vm: 'web',
        probe: { Http: { port: 80, path: '/healthz' } },
        intervalSecs: 10,
        timeoutSecs: 2,
        retries: 3,
        startPeriodSecs: 60,
        onUnhealthy: 'Restart',
      },
    },
  });
  assert.equal(spec.validateSpec(parsed), null);
  const without = spec.parseSpec(JSON.stringify({ version: 0, workloads: [{ name: 'net', kind: { network } }, { name: 'web', kind: { vm } }] }));
  assert.deepEqual(spec.requiredResources(parsed), spec.requiredResources(without));
  // The other probes and the other reaction.
  assert.deepEqual(parsedCheck(probeWith({ command: 'pgrep nginx' })).probe, { Command: 'pgrep nginx' });
  assert.deepEqual(parsedCheck(probeWith({ tcp: 22 })).probe, { Tcp: 22 });
  assert.equal(parsedCheck(healthWith({ on_unhealthy: 'report' })).onUnhealthy, 'Report');
  // The chain's JSON (camelCase fields, PascalCase variants) reads the same.
  const camel = parsedCheck(healthText({ vm: 'web', probe: { Tcp: 22 }, intervalSecs: 60, startPeriodSecs: 0, onUnhealthy: 'Report' }));
  assert.deepEqual(camel, { vm: 'web', probe: { Tcp: 22 }, intervalSecs: 60, timeoutSecs: 5, retries: 3, startPeriodSecs: 0, onUnhealthy: 'Report' });
  assert.deepEqual(parsedCheck(probeWith({ Http: { port: 8080, path: '/' } })).probe, { Http: { port: 8080, path: '/' } });
});

test('a health check written with only its VM and probe takes the serde defaults', () => {
  const check = parsedCheck(healthText({ vm: 'web', probe: { http: { port: 8080, path: '/healthz' } } }));
  assert.deepEqual(
    [check.intervalSecs, check.timeoutSecs, check.retries, check.startPeriodSecs, check.onUnhealthy],
    [30, 5, 3, 120, 'Restart'],
  );
  assert.deepEqual(spec.HEALTH_DEFAULTS, { interval_secs: 30, timeout_secs: 5, retries: 3, start_period_secs: 120, on_unhealthy: 'restart' });
  assert.equal(ruleBroken(healthText({ vm: 'web', probe: { command: 'pgrep nginx' } })), null);
  // The default timeout (5 s) is checked against the interval like a written one.
  assert.equal(ruleBroken(healthText({ vm: 'web', probe: { tcp: 22 }, interval_secs: 5 })), null);
});

test('each broken health check rule is named by the SpecError the chain returns, in the chain\'s order', () => {
  const disk = { name: 'data', kind: { disk: { size_mib: 1024 } } };
  const net2 = { name: 'net2', kind: { network: { ...network, ip_range: '10.21.0.0/16', subnet: '10.21.1.0/24' } } };
  const brokenNet2 = { ...net2, kind: { network: { ...net2.kind.network, listen_port: 0 } } };
  const second = (patch) => ({ name: 'web-health-2', kind: { health_check: { ...webHealth, probe: { tcp: 22 }, ...patch } } });
  const cases = [
    ['UnknownHealthCheckTarget', healthWith({ vm: 'nobody' })],
    ['HealthCheckTargetNotAVm', healthWith({ vm: 'net' })],
    ['HealthCheckTargetNotAVm', healthText({ ...webHealth, vm: 'data' }, disk)],
    ['HealthCheckTargetNotAVm', healthWith({ vm: 'web-health' })],
    ['DuplicateHealthCheck', healthText(webHealth, second({}))],
    ['HealthTimingOutOfRange', healthWith({ interval_secs: 4 })],
    ['HealthTimingOutOfRange', healthWith({ interval_secs: 3601, timeout_secs: 2 })],
    ['HealthTimingOutOfRange', healthWith({ timeout_secs: 11 })],
    ['HealthTimingOutOfRange', healthWith({ timeout_secs: 0 })],
    ['HealthTimingOutOfRange', healthWith({ interval_secs: 600, timeout_secs: 61 })],
    ['HealthTimingOutOfRange', healthWith({ retries: 0 })],
    ['HealthTimingOutOfRange', healthWith({ retries: 21 })],
    ['HealthTimingOutOfRange', healthWith({ start_period_secs: 3601 })],
    ['HealthTimingOutOfRange', healthText({ vm: 'web', probe: { tcp: 22 }, interval_secs: 4 })],
    ['InvalidHealthProbe', probeWith({ tcp: 0 })],
    ['InvalidHealthProbe', probeWith({ http: { port: 0, path: '/healthz' } })],
    ['InvalidHealthProbe', probeWith({ http: { port: 80, path: 'healthz' } })],
    ['InvalidHealthProbe', probeWith({ http: { port: 80, path: '' } })],
    ['InvalidHealthProbe', probeWith({ http: { port: 80, path: '/a b' } })],
    ['InvalidHealthProbe', probeWith({ http: { port: 80, path: '/caf\u00e9' } })],
    ['InvalidHealthProbe', probeWith({ command: '' })],
    ['InvalidHealthProbe', probeWith({ command: '  ' })],
    ['InvalidHealthProbe', probeWith({ command: ' \t\n\f\r' })],
    ['InvalidHealthProbe', probeWith({ command: 'true\u0000' })],
    // Within a check: the target, then the timing, then the probe.
    ['UnknownHealthCheckTarget', healthWith({ vm: 'nobody', interval_secs: 0, probe: { tcp: 0 } })],
    ['HealthCheckTargetNotAVm', healthWith({ vm: 'net', interval_secs: 0, probe: { tcp: 0 } })],
    ['HealthTimingOutOfRange', healthWith({ retries: 0, probe: { tcp: 0 } })],
    // The check is checked where it stands among the workloads: before a later broken network.
    ['HealthTimingOutOfRange', healthText({ ...webHealth, retries: 0 }, brokenNet2)],
    // One check per VM is compared after every workload's own rules...
    ['ListenPortZero', healthText(webHealth, second({}), brokenNet2)],
    ['InvalidHealthProbe', healthText(webHealth, second({ probe: { tcp: 0 } }))],
    // ...and before gateway hosts, public IPv4 and networks are compared across the spec.
    ['DuplicateHealthCheck', healthText(webHealth, second({}), { name: 'site', kind: { gateway: site } }, { name: 'site2', kind: { gateway: site } })],
    ['DuplicateHealthCheck', healthText(webHealth, second({}), { ...net2, kind: { network: { ...network } } })],
  ];
  for (const [expected, text] of cases) assert.equal(ruleBroken(text), expected, text);
  for (const name of ['UnknownHealthCheckTarget', 'HealthCheckTargetNotAVm', 'DuplicateHealthCheck', 'HealthTimingOutOfRange', 'InvalidHealthProbe']) {
    assert.ok(cases.some(([e]) => e === name), `no case for ${name}`);
    assert.ok(spec.SPEC_ERROR_DOCS[name], `no doc line for ${name}`);
  }
});

test('health checks at the edge of the rules pass', () => {
  const cases = [
    healthWith({ interval_secs: 5, timeout_secs: 5 }),
    healthWith({ interval_secs: 3600, timeout_secs: 60 }),
    healthWith({ timeout_secs: 1 }),
    healthWith({ retries: 1 }),
    healthWith({ retries: 20 }),
    healthWith({ start_period_secs: 0 }),
    healthWith({ start_period_secs: 3600 }),
    healthWith({ on_unhealthy: 'report' }),
    probeWith({ tcp: 65535 }),
    probeWith({ http: { port: 65535, path: '/' } }),
    probeWith({ http: { port: 80, path: `/${'a'.repeat(127)}` } }),
    probeWith({ http: { port: 80, path: '/health?full=1&x=%20' } }),
    probeWith({ command: 'x'.repeat(256) }),
    probeWith({ command: '  pgrep nginx  ' }),
    probeWith({ command: 'test -f /run/caf\u00e9' }),
    // `u8::is_ascii_whitespace` leaves out the vertical tab: a command of one is not blank.
    probeWith({ command: '\u000b' }),
    // One check per VM: two VMs, a check each.
    healthText(webHealth, { name: 'web2', kind: { vm: { ...vm, networks: [{ network: 'net', ip: '10.20.1.3' }] } } },
      { name: 'web2-health', kind: { health_check: { ...webHealth, vm: 'web2' } } }),
    // The check may come before its VM.
    JSON.stringify({ version: 0, workloads: [{ name: 'a-check', kind: { health_check: webHealth } }, { name: 'net', kind: { network } }, { name: 'web', kind: { vm } }] }),
  ];
  for (const text of cases) assert.equal(ruleBroken(text), null, text);
});

test('a health check the file format cannot hold is refused before the rules, naming the field', () => {
  const cases = [
    [healthWith({ port: 80 }), /workloads\[2\]\.kind\.health_check: unknown field `port`/],
    [healthWith({ vm: undefined }), /\.health_check\.vm: expected a string/],
    [healthWith({ vm: 'x'.repeat(37) }), /\.vm: longer than 36 bytes/],
    [healthWith({ probe: undefined }), /\.probe: expected an object/],
    [probeWith('tcp'), /\.probe: expected an object/],
    [probeWith({}), /\.probe: expected \{ command \}, \{ tcp \} or \{ http \}/],
    [probeWith({ udp: 53 }), /\.probe: expected \{ command \}, \{ tcp \} or \{ http \}/],
    [probeWith({ tcp: 22, command: 'true' }), /\.probe: expected \{ command \}, \{ tcp \} or \{ http \}/],
    [probeWith({ tcp: 65536 }), /\.probe\.tcp: larger than 65535/],
    [probeWith({ tcp: '22' }), /\.probe\.tcp: expected a non-negative integer/],
    [probeWith({ command: 'x'.repeat(257) }), /\.probe\.command: longer than 256 bytes/],
    [probeWith({ command: ['pgrep', 'nginx'] }), /\.probe\.command: expected a string/],
    [probeWith({ http: { port: 80, path: '/', method: 'GET' } }), /\.probe\.http: unknown field `method`/],
    [probeWith({ http: { port: 80 } }), /\.probe\.http\.path: expected a string/],
    [probeWith({ http: { path: '/' } }), /\.probe\.http\.port: expected a non-negative integer/],
    [probeWith({ http: { port: 80, path: `/${'a'.repeat(128)}` } }), /\.probe\.http\.path: longer than 128 bytes/],
    [probeWith({ http: 80 }), /\.probe\.http: expected an object/],
    [healthWith({ interval_secs: 65536 }), /\.interval_secs: larger than 65535/],
    [healthWith({ timeout_secs: -1 }), /\.timeout_secs: expected a non-negative integer/],
    [healthWith({ retries: 256 }), /\.retries: larger than 255/],
    [healthWith({ start_period_secs: 1.5 }), /\.start_period_secs: expected a non-negative integer/],
    [healthWith({ interval_secs: null }), /\.interval_secs: expected a non-negative integer/],
    [healthWith({ on_unhealthy: 'ignore' }), /\.on_unhealthy: expected "restart" or "report"/],
    [healthWith({ on_unhealthy: null }), /\.on_unhealthy: expected "restart" or "report"/],
    [healthText('web'), /\.health_check: expected an object/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => spec.parseSpec(text), (e) => e instanceof spec.SpecProblem && e.specError === null && message.test(e.message), text);
  }
  // The kind is offered among the others.
  assert.throws(() => spec.parseSpec(healthText(webHealth).replace('"health_check"', '"healthcheck"')), /expected one of .*health_check/);
});

// Needs zos-client/metadata/zos-runtime.scale regenerated from a node with health checks.
test('a health check read from chain shows in the readable form, which reads back to the same spec', async () => {
  const { Metadata, TypeRegistry } = await import('@polkadot/types');
  const registry = new TypeRegistry();
  registry.setMetadata(new Metadata(registry, readFileSync(new URL('../../zos-client/metadata/zos-runtime.scale', import.meta.url))));
  const parsed = spec.parseSpec(healthText(webHealth,
    { name: 'web-cmd', kind: { health_check: { vm: 'web', probe: { command: 'pgrep nginx' }, on_unhealthy: 'report' } } },
    { name: 'web-tcp', kind: { health_check: { vm: 'web', probe: { tcp: 22 } } } }));
  const codec = registry.createType('ZosPrimitivesSpecDeploymentSpec', parsed);
  // Added last: variant 6, after the gateway; then the fields in order (SCALE, little-endian).
  const enc = (s) => [...new TextEncoder().encode(s)];
  assert.deepEqual([...codec.workloads[2].kind.toU8a()], [
    6, 3 << 2, ...enc('web'), 2, 80, 0, 8 << 2, ...enc('/healthz'), 10, 0, 2, 0, 3, 60, 0, 0,
  ]);
  assert.deepEqual([...codec.workloads[3].kind.toU8a()], [6, 3 << 2, ...enc('web'), 0, 11 << 2, ...enc('pgrep nginx'), 30, 0, 5, 0, 3, 120, 0, 1]);
  assert.deepEqual([...codec.workloads[4].kind.toU8a()], [6, 3 << 2, ...enc('web'), 1, 22, 0, 30, 0, 5, 0, 3, 120, 0, 0]);
  const readable = spec.readableSpec(codec);
  assert.deepEqual(readable.workloads.slice(2).map((w) => w.kind), [
    { health_check: webHealth },
    { health_check: { vm: 'web', probe: { command: 'pgrep nginx' }, interval_secs: 30, timeout_secs: 5, retries: 3, start_period_secs: 120, on_unhealthy: 'report' } },
    { health_check: { vm: 'web', probe: { tcp: 22 }, interval_secs: 30, timeout_secs: 5, retries: 3, start_period_secs: 120, on_unhealthy: 'restart' } },
  ]);
  const again = spec.parseSpec(JSON.stringify(readable));
  assert.deepEqual(again, parsed);
  assert.deepEqual(registry.createType('ZosPrimitivesSpecDeploymentSpec', again).toU8a(), codec.toU8a());
});

// Needs the refreshed metadata too: what the contract page and the event list read.
test('the runtime reports health: WorkloadResult::Unhealthy and the WorkloadUnhealthy, WorkloadRecovered events', async () => {
  const { Metadata, TypeRegistry } = await import('@polkadot/types');
  const registry = new TypeRegistry();
  const metadata = new Metadata(registry, readFileSync(new URL('../../zos-client/metadata/zos-runtime.scale', import.meta.url)));
  registry.setMetadata(metadata);
  // The contract page shows `isUnhealthy` / `asUnhealthy` as "unhealthy: <reason>".
  const result = registry.createType('PalletDeploymentsWorkloadResult', { Unhealthy: 'connection refused' });
  assert.equal(result.isUnhealthy, true);
  assert.equal(result.asUnhealthy.toUtf8(), 'connection refused');
  assert.equal(result.index, 2);
  assert.equal(registry.createType('PalletDeploymentsWorkloadResult', { Error: 'boom' }).isUnhealthy, false);
  const pallet = metadata.asLatest.pallets.find((p) => p.name.toString() === 'Deployments');
  const events = registry.lookup.getSiType(pallet.events.unwrap().type).def.asVariant.variants;
  const fields = (name) => events.find((v) => v.name.toString() === name)?.fields.map((f) => f.name.toString());
  assert.deepEqual(fields('WorkloadUnhealthy'), ['contract', 'workload', 'reason']);
  assert.deepEqual(fields('WorkloadRecovered'), ['contract', 'workload']);
  // The spec errors the editor names are the runtime's, in its order.
  const specErrors = registry.createType('ZosPrimitivesSpecSpecError').defKeys;
  assert.deepEqual(specErrors, Object.keys(spec.SPEC_ERROR_DOCS));
});

test('a sealed environment value must be a well-formed sealed box, as the chain checks', () => {
  const withEnv = (value) => JSON.stringify({
    version: 0,
    workloads: [
      { name: 'net', kind: { network } },
      { name: 'web', kind: { vm: { ...vm, env: [{ key: 'API_TOKEN', value }] } } },
    ],
  });
  // 48 bytes of box and 16 of tag at least: 64 bytes are 88 base64 characters (one '=').
  const sealed = `zos-sealed:v1:${Buffer.alloc(70, 7).toString('base64')}`;
  assert.equal(ruleBroken(withEnv(sealed)), null);
  assert.equal(ruleBroken(withEnv(`zos-sealed:v1:${Buffer.alloc(64, 1).toString('base64')}`)), null);
  for (const bad of ['zos-sealed:v1:', 'zos-sealed:v1:AAAA', 'zos-sealed:v1:not base64!', `${sealed}=`, `zos-sealed:v1:${Buffer.alloc(63, 1).toString('base64')}`]) {
    assert.equal(ruleBroken(withEnv(bad)), 'InvalidSealedEnvValue', bad);
  }
  // Plain values are public and unchecked.
  assert.equal(ruleBroken(withEnv('zos-sealed:v2:anything')), null);
  assert.ok(spec.SPEC_ERROR_DOCS.InvalidSealedEnvValue.includes('zos seal-env'));
});
