// Deployment specs in the readable file form deployers keep (the serde form of
// `zos_primitives::spec::DeploymentSpec`, as `zos deploy` reads it from JSON or TOML): snake_case
// names, `kind: { disk: { size_mib } }`, hex hashes, dotted-quad addresses, CIDR strings,
// "host:port" endpoints and gateway backends, health probes as `{ http: { port, path } }`. Converted to the object polkadot.js encodes from the
// metadata, and checked with the same rules, in the same order, as `DeploymentSpec::validate` on
// chain.

export const LIMITS = {
  MAX_WORKLOADS: 32,
  MAX_WORKLOAD_NAME_LEN: 36,
  MAX_METADATA_LEN: 1024,
  MAX_IMAGE_SOURCE_LEN: 256,
  MAX_MOUNTS: 8,
  MAX_MOUNT_PATH_LEN: 128,
  MAX_ENV_VARS: 16,
  MAX_ENV_KEY_LEN: 64,
  MAX_ENV_VALUE_LEN: 256,
  MAX_ENTRYPOINT_LEN: 256,
  MAX_SSH_KEYS: 4,
  MAX_SSH_KEY_LEN: 800,
  MAX_NETWORK_ATTACHMENTS: 4,
  MAX_PEERS: 32,
  MAX_ALLOWED_IPS: 8,
  MAX_PUBLIC_IPV4: 8,
  MAX_GATEWAY_BACKENDS: 8,
  MAX_GATEWAY_NAME_LEN: 63,
  MAX_FQDN_LEN: 253,
  SEALED_WIREGUARD_KEY_LEN: 80,
  MAX_HEALTH_COMMAND_LEN: 256,
  MAX_HTTP_PATH_LEN: 128,
  MIN_HEALTH_INTERVAL_SECS: 5,
  MAX_HEALTH_INTERVAL_SECS: 3600,
  MAX_HEALTH_RETRIES: 20,
  MAX_HEALTH_TIMEOUT_SECS: 60,
  MAX_HEALTH_START_PERIOD_SECS: 3600,
  MIN_VCPUS: 1,
  MAX_VCPUS: 64,
  MIN_VM_MEMORY_MIB: 256,
  MAX_VM_MEMORY_MIB: 512 * 1024,
  MIN_ROOTFS_MIB: 256,
  MAX_ROOTFS_MIB: 1024 * 1024,
  MIN_DISK_MIB: 1,
  MAX_DISK_MIB: 16 * 1024 * 1024,
};

const MIB = 1n << 20n;

/** A spec as polkadot.js encodes it (camelCase fields, PascalCase variants). */
export type ChainSpec = {
  version: number;
  workloads: { name: string; kind: Record<string, any> }[];
  metadata: string;
};

export type Cidr = { ip: number[]; prefixLen: number };

/** A problem found before anything is sent: a SpecError variant name, or a format problem. */
export class SpecProblem extends Error {
  constructor(
    /** `SpecError` variant (what the chain would answer with `deployments.InvalidSpec`), or null. */
    readonly specError: string | null,
    message: string,
    readonly path = '',
  ) {
    super(message);
  }
}

const KINDS: Record<string, string> = {
  vm: 'Vm', disk: 'Disk', volume: 'Volume', network: 'Network', public_ip: 'PublicIp', gateway: 'Gateway',
  health_check: 'HealthCheck',
};

/** `HealthCheckSpec`'s serde defaults, for the fields a file leaves out. */
export const HEALTH_DEFAULTS = {
  interval_secs: 30, timeout_secs: 5, retries: 3, start_period_secs: 120, on_unhealthy: 'restart',
};

const snake = (k: string) => k.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
const camel = (k: string) => k.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** Object keys in snake_case whatever the input used (the chain's JSON is camelCase). */
function snakeKeys(value: unknown): any {
  if (Array.isArray(value)) return value.map(snakeKeys);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[snake(k)] = snakeKeys(v);
    return out;
  }
  return value;
}

const utf8 = new TextEncoder();
const byteLen = (s: string) => utf8.encode(s).length;

function fail(path: string, message: string): never {
  throw new SpecProblem(null, `${path}: ${message}`, path);
}

function allowKeys(obj: Record<string, unknown>, keys: string[], path: string) {
  for (const k of Object.keys(obj)) {
    if (!keys.includes(k)) fail(path, `unknown field \`${k}\` (expected one of ${keys.join(', ')})`);
  }
}

function str(v: unknown, path: string, max: number, dflt?: string): string {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'string') fail(path, 'expected a string');
  if (byteLen(v) > max) fail(path, `longer than ${max} bytes`);
  return v;
}

function int(v: unknown, path: string, max: number | bigint): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) fail(path, 'expected a non-negative integer');
  if (BigInt(v) > BigInt(max)) fail(path, `larger than ${max}`);
  return v;
}

function bool(v: unknown, path: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') fail(path, 'expected true or false');
  return v;
}

function list(v: unknown, path: string, max: number): unknown[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) fail(path, 'expected a list');
  if (v.length > max) fail(path, `more than ${max} entries`);
  return v;
}

function obj(v: unknown, path: string): Record<string, unknown> {
  if (!v || typeof v !== 'object' || Array.isArray(v)) fail(path, 'expected an object');
  return v as Record<string, unknown>;
}

function hexBytes(v: unknown, path: string, len?: number, max?: number): string {
  if (typeof v !== 'string') fail(path, 'expected hex');
  const digits = v.startsWith('0x') ? v.slice(2) : v;
  if (!/^([0-9a-fA-F]{2})*$/.test(digits)) fail(path, 'not hex');
  const n = digits.length / 2;
  if (len !== undefined && n !== len) fail(path, `expected ${len} bytes of hex`);
  if (max !== undefined && n > max) fail(path, `longer than ${max} bytes`);
  return `0x${digits.toLowerCase()}`;
}

export function parseIpv4(v: unknown, path: string): number[] {
  if (typeof v !== 'string') fail(path, 'expected an IPv4 address like "10.20.1.2"');
  const parts = v.split('.');
  // No leading zeros: Rust's `Ipv4Addr` parser refuses them (`010` could be read as octal).
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255)) {
    fail(path, `\`${v}\` is not an IPv4 address`);
  }
  return parts.map(Number);
}

export function parseCidr(v: unknown, path: string): Cidr {
  if (typeof v !== 'string' || !v.includes('/')) fail(path, 'expected address/prefix like "10.20.0.0/16"');
  const [ip, prefix] = v.split('/');
  if (!/^\d{1,2}$/.test(prefix) || Number(prefix) > 32) fail(path, `prefix /${prefix} is not 0-32`);
  return { ip: parseIpv4(ip, path), prefixLen: Number(prefix) };
}

function parseEndpoint(v: unknown, path: string) {
  if (v === undefined || v === null) return null;
  return parseSocketAddress(v, path);
}

/** `SocketAddress` (a peer endpoint, a gateway backend): "10.20.1.2:80" or "[2001:db8::1]:443". */
function parseSocketAddress(v: unknown, path: string) {
  if (typeof v !== 'string') fail(path, 'expected "host:port"');
  // Any number of port digits, as Rust's `SocketAddr` parser reads them; the value must fit a u16.
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([\d.]+)):(\d+)$/.exec(v);
  if (!m || Number(m[3]) > 65535) fail(path, `\`${v}\` is not host:port`);
  const port = Number(m[3]);
  if (m[2]) return { V4: { ip: parseIpv4(m[2], path), port } };
  return { V6: { ip: parseIpv6(m[1], path), port } };
}

/** Text IPv6 as Rust's `Ipv6Addr` parser reads it: one `::` at most, standing for at least one
 * zero group, and optionally a dotted quad as the last two groups (`::ffff:10.0.0.1`). */
function parseIpv6(text: string, path: string): number[] {
  const bad = () => fail(path, `\`${text}\` is not IPv6`);
  let hexText = text;
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    if (lastColon < 0) bad();
    const q = parseIpv4(text.slice(lastColon + 1), path);
    hexText = `${text.slice(0, lastColon + 1)}${((q[0] << 8) | q[1]).toString(16)}:${((q[2] << 8) | q[3]).toString(16)}`;
  }
  const halves = hexText.split('::');
  if (halves.length > 2) bad();
  const groupsOf = (s: string) => (s === '' ? [] : s.split(':'));
  const head = groupsOf(halves[0]);
  const tail = halves.length === 2 ? groupsOf(halves[1]) : [];
  const elided = halves.length === 2 ? 8 - head.length - tail.length : 0;
  if (halves.length === 2 ? elided < 1 : head.length !== 8) bad();
  const groups = [...head, ...Array(elided).fill('0'), ...tail];
  if (!groups.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) bad();
  return groups.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 255]);
}

/**
 * Readable JSON text -> the object polkadot.js encodes. Refuses unknown fields like the serde
 * form does (a typo must not silently drop a setting). Accepts camelCase keys too.
 */
export function parseSpec(text: string): ChainSpec {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new SpecProblem(null, `not JSON: ${(e as Error).message}`);
  }
  const s = snakeKeys(obj(raw, 'spec'));
  allowKeys(s, ['version', 'workloads', 'metadata'], 'spec');
  const version = int(s.version, 'version', 0xffffffff);
  const metadata = str(s.metadata, 'metadata', LIMITS.MAX_METADATA_LEN, '');
  const workloads = list(s.workloads, 'workloads', LIMITS.MAX_WORKLOADS).map((w, i) => {
    const p = `workloads[${i}]`;
    const o = obj(w, p);
    allowKeys(o, ['name', 'kind'], p);
    const name = str(o.name, `${p}.name`, LIMITS.MAX_WORKLOAD_NAME_LEN);
    const kindObj = obj(o.kind, `${p}.kind`);
    const keys = Object.keys(kindObj);
    if (keys.length !== 1 || !KINDS[keys[0]]) {
      fail(`${p}.kind`, `expected one of ${Object.keys(KINDS).join(', ')}`);
    }
    const kp = `${p}.kind.${keys[0]}`;
    const body = obj(kindObj[keys[0]], kp);
    return { name, kind: { [KINDS[keys[0]]]: parseKind(keys[0], body, kp) } };
  });
  return { version, workloads, metadata };
}

function parseKind(kind: string, b: Record<string, any>, p: string): Record<string, unknown> {
  switch (kind) {
    case 'disk':
    case 'volume':
      allowKeys(b, ['size_mib'], p);
      return { sizeMib: int(b.size_mib, `${p}.size_mib`, Number.MAX_SAFE_INTEGER) };
    case 'public_ip':
      allowKeys(b, ['v4', 'v6'], p);
      return { v4: bool(b.v4, `${p}.v4`), v6: bool(b.v6, `${p}.v6`) };
    case 'gateway': {
      allowKeys(b, ['host', 'network', 'backends', 'tls_passthrough'], p);
      // Unlike most lists, `backends` has no serde default: a missing list is a format error,
      // only an empty one is `NoGatewayBackends`.
      if (!Array.isArray(b.backends)) fail(`${p}.backends`, 'expected a list of "address:port"');
      return {
        host: parseGatewayHost(b.host, `${p}.host`),
        network: b.network === undefined || b.network === null
          ? null
          : str(b.network, `${p}.network`, LIMITS.MAX_WORKLOAD_NAME_LEN),
        backends: list(b.backends, `${p}.backends`, LIMITS.MAX_GATEWAY_BACKENDS).map((a, i) =>
          parseSocketAddress(a, `${p}.backends[${i}]`)),
        tlsPassthrough: bool(b.tls_passthrough, `${p}.tls_passthrough`),
      };
    }
    case 'health_check': {
      allowKeys(b, ['vm', 'probe', 'interval_secs', 'timeout_secs', 'retries', 'start_period_secs', 'on_unhealthy'], p);
      const d = HEALTH_DEFAULTS;
      const orDefault = (v: unknown, path: string, max: number, dflt: number) => (v === undefined ? dflt : int(v, path, max));
      return {
        vm: str(b.vm, `${p}.vm`, LIMITS.MAX_WORKLOAD_NAME_LEN),
        probe: parseHealthProbe(b.probe, `${p}.probe`),
        intervalSecs: orDefault(b.interval_secs, `${p}.interval_secs`, 0xffff, d.interval_secs),
        timeoutSecs: orDefault(b.timeout_secs, `${p}.timeout_secs`, 0xffff, d.timeout_secs),
        retries: orDefault(b.retries, `${p}.retries`, 0xff, d.retries),
        startPeriodSecs: orDefault(b.start_period_secs, `${p}.start_period_secs`, 0xffff, d.start_period_secs),
        onUnhealthy: parseOnUnhealthy(b.on_unhealthy === undefined ? d.on_unhealthy : b.on_unhealthy, `${p}.on_unhealthy`),
      };
    }
    case 'network': {
      allowKeys(b, ['ip_range', 'subnet', 'listen_port', 'peers', 'private_key', 'outbound_internet'], p);
      return {
        ipRange: parseCidr(b.ip_range, `${p}.ip_range`),
        subnet: parseCidr(b.subnet, `${p}.subnet`),
        listenPort: int(b.listen_port, `${p}.listen_port`, 65535),
        peers: list(b.peers, `${p}.peers`, LIMITS.MAX_PEERS).map((peer, i) => {
          const pp = `${p}.peers[${i}]`;
          const o = obj(peer, pp);
          allowKeys(o, ['public_key', 'endpoint', 'allowed_ips'], pp);
          return {
            publicKey: hexBytes(o.public_key, `${pp}.public_key`, 32),
            endpoint: parseEndpoint(o.endpoint, `${pp}.endpoint`),
            allowedIps: list(o.allowed_ips, `${pp}.allowed_ips`, LIMITS.MAX_ALLOWED_IPS).map((c, j) =>
              parseCidr(c, `${pp}.allowed_ips[${j}]`)),
          };
        }),
        privateKey: hexBytes(b.private_key, `${p}.private_key`, undefined, LIMITS.SEALED_WIREGUARD_KEY_LEN),
        outboundInternet: bool(b.outbound_internet, `${p}.outbound_internet`),
      };
    }
    case 'vm': {
      allowKeys(b, ['image', 'vcpus', 'memory_mib', 'rootfs_mib', 'mounts', 'env', 'entrypoint', 'ssh_keys', 'networks', 'public_ip', 'overlay'], p);
      const image = obj(b.image, `${p}.image`);
      allowKeys(image, ['root_hash', 'source'], `${p}.image`);
      return {
        image: {
          rootHash: hexBytes(image.root_hash, `${p}.image.root_hash`, 32),
          source: str(image.source, `${p}.image.source`, LIMITS.MAX_IMAGE_SOURCE_LEN),
        },
        vcpus: int(b.vcpus, `${p}.vcpus`, 0xffffffff),
        memoryMib: int(b.memory_mib, `${p}.memory_mib`, Number.MAX_SAFE_INTEGER),
        rootfsMib: int(b.rootfs_mib, `${p}.rootfs_mib`, Number.MAX_SAFE_INTEGER),
        mounts: list(b.mounts, `${p}.mounts`, LIMITS.MAX_MOUNTS).map((m, i) => {
          const o = obj(m, `${p}.mounts[${i}]`);
          allowKeys(o, ['workload', 'path'], `${p}.mounts[${i}]`);
          return {
            workload: str(o.workload, `${p}.mounts[${i}].workload`, LIMITS.MAX_WORKLOAD_NAME_LEN),
            path: str(o.path, `${p}.mounts[${i}].path`, LIMITS.MAX_MOUNT_PATH_LEN),
          };
        }),
        env: list(b.env, `${p}.env`, LIMITS.MAX_ENV_VARS).map((e, i) => {
          const o = obj(e, `${p}.env[${i}]`);
          allowKeys(o, ['key', 'value'], `${p}.env[${i}]`);
          return {
            key: str(o.key, `${p}.env[${i}].key`, LIMITS.MAX_ENV_KEY_LEN),
            value: str(o.value, `${p}.env[${i}].value`, LIMITS.MAX_ENV_VALUE_LEN),
          };
        }),
        entrypoint: str(b.entrypoint, `${p}.entrypoint`, LIMITS.MAX_ENTRYPOINT_LEN, ''),
        sshKeys: list(b.ssh_keys, `${p}.ssh_keys`, LIMITS.MAX_SSH_KEYS).map((k, i) =>
          str(k, `${p}.ssh_keys[${i}]`, LIMITS.MAX_SSH_KEY_LEN)),
        networks: list(b.networks, `${p}.networks`, LIMITS.MAX_NETWORK_ATTACHMENTS).map((n, i) => {
          const o = obj(n, `${p}.networks[${i}]`);
          allowKeys(o, ['network', 'ip'], `${p}.networks[${i}]`);
          return {
            network: str(o.network, `${p}.networks[${i}].network`, LIMITS.MAX_WORKLOAD_NAME_LEN),
            ip: parseIpv4(o.ip, `${p}.networks[${i}].ip`),
          };
        }),
        publicIp: b.public_ip === undefined || b.public_ip === null
          ? null
          : str(b.public_ip, `${p}.public_ip`, LIMITS.MAX_WORKLOAD_NAME_LEN),
        overlay: bool(b.overlay, `${p}.overlay`),
      };
    }
  }
  fail(p, 'unknown workload kind');
}

/** `GatewayHost`: `{ name: "myapp" }` (under the node's domain) or `{ fqdn: "shop.example.org" }`. */
function parseGatewayHost(v: unknown, path: string) {
  const o = obj(v, path);
  const keys = Object.keys(o);
  if (keys.length !== 1 || (keys[0] !== 'name' && keys[0] !== 'fqdn')) fail(path, 'expected { name } or { fqdn }');
  if (keys[0] === 'name') return { Name: str(o.name, `${path}.name`, LIMITS.MAX_GATEWAY_NAME_LEN) };
  return { Fqdn: str(o.fqdn, `${path}.fqdn`, LIMITS.MAX_FQDN_LEN) };
}

/** `HealthProbe`: `{ command: "pgrep nginx" }`, `{ tcp: 22 }` or `{ http: { port: 80, path: "/healthz" } }`. */
function parseHealthProbe(v: unknown, path: string) {
  const o = obj(v, path);
  const keys = Object.keys(o);
  if (keys.length !== 1 || !['command', 'tcp', 'http'].includes(keys[0])) fail(path, 'expected { command }, { tcp } or { http }');
  if (keys[0] === 'command') return { Command: str(o.command, `${path}.command`, LIMITS.MAX_HEALTH_COMMAND_LEN) };
  if (keys[0] === 'tcp') return { Tcp: int(o.tcp, `${path}.tcp`, 0xffff) };
  const http = obj(o.http, `${path}.http`);
  allowKeys(http, ['port', 'path'], `${path}.http`);
  return {
    Http: {
      port: int(http.port, `${path}.http.port`, 0xffff),
      path: str(http.path, `${path}.http.path`, LIMITS.MAX_HTTP_PATH_LEN),
    },
  };
}

/** `OnUnhealthy`: "restart" or "report" (the chain's JSON writes them "Restart", "Report"). */
function parseOnUnhealthy(v: unknown, path: string): string {
  const variants: Record<string, string> = { restart: 'Restart', report: 'Report', Restart: 'Restart', Report: 'Report' };
  if (typeof v !== 'string' || !variants[v]) fail(path, 'expected "restart" or "report"');
  return variants[v];
}

// ---- validation: `DeploymentSpec::validate`, rule by rule, first broken rule wins.

const u32 = (ip: number[]) => ((ip[0] << 24) | (ip[1] << 16) | (ip[2] << 8) | ip[3]) >>> 0;
const mask = (prefix: number) => (prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);
const network = (c: Cidr) => (u32(c.ip) & mask(c.prefixLen)) >>> 0;
const broadcast = (c: Cidr) => (u32(c.ip) | (~mask(c.prefixLen) >>> 0)) >>> 0;
const contains = (c: Cidr, ip: number[]) => ((u32(ip) & mask(c.prefixLen)) >>> 0) === network(c);
const hostBitsClear = (c: Cidr) => c.prefixLen <= 32 && network(c) === u32(c.ip);
const isPrivate = (ip: number[]) =>
  ip[0] === 10 || (ip[0] === 172 && ip[1] >= 16 && ip[1] <= 31) || (ip[0] === 192 && ip[1] === 168);
const isZeroHex = (h: string) => /^0x0*$/.test(h);
const isPrintable = (s: string) => [...utf8.encode(s)].every((c) => c > 0x20 && c < 0x7f);
const noNul = (s: string) => !s.includes('\0');

/** `SpecError` variant of the first rule the spec breaks, or null if it passes. */
export function validateSpec(spec: ChainSpec): string | null {
  const ws = spec.workloads;
  if (ws.length === 0) return 'NoWorkloads';
  const seen = new Set<string>();
  for (const w of ws) {
    if (!/^[a-z0-9_-]+$/.test(w.name)) return 'InvalidWorkloadName';
    if (seen.has(w.name)) return 'DuplicateWorkloadName';
    seen.add(w.name);
  }
  const byName = (n: string) => ws.find((w) => w.name === n);
  let ipv4 = 0;
  for (const w of ws) {
    const [kind, b] = Object.entries(w.kind)[0];
    if (kind === 'Vm') {
      const e = checkVm(b, byName);
      if (e) return e;
    } else if (kind === 'Disk') {
      if (b.sizeMib < LIMITS.MIN_DISK_MIB || b.sizeMib > LIMITS.MAX_DISK_MIB) return 'DiskSizeOutOfRange';
    } else if (kind === 'Volume') {
      if (b.sizeMib < LIMITS.MIN_DISK_MIB || b.sizeMib > LIMITS.MAX_DISK_MIB) return 'VolumeSizeOutOfRange';
    } else if (kind === 'Network') {
      const e = checkNetwork(b);
      if (e) return e;
    } else if (kind === 'PublicIp') {
      if (!b.v4 && !b.v6) return 'PublicIpWithoutFamily';
      if (b.v4) ipv4 += 1;
    } else if (kind === 'Gateway') {
      const e = checkGateway(b, byName);
      if (e) return e;
    } else if (kind === 'HealthCheck') {
      const e = checkHealthCheck(b, byName);
      if (e) return e;
    }
  }
  // One check per VM.
  const checked = ws.filter((w) => w.kind.HealthCheck).map((w) => w.kind.HealthCheck.vm);
  if (new Set(checked).size !== checked.length) return 'DuplicateHealthCheck';
  // Hosts compare by variant and text, as `GatewayHost`'s equality does.
  const hostKey = (g: any) => (g.host.Name !== undefined ? `name:${g.host.Name}` : `fqdn:${g.host.Fqdn}`);
  const hosts = ws.filter((w) => w.kind.Gateway).map((w) => hostKey(w.kind.Gateway));
  if (new Set(hosts).size !== hosts.length) return 'DuplicateGatewayHost';
  if (ipv4 > LIMITS.MAX_PUBLIC_IPV4) return 'TooManyPublicIpv4';
  const nets = ws.filter((w) => w.kind.Network).map((w) => w.kind.Network);
  for (let i = 0; i < nets.length; i++) {
    if (nets.slice(0, i).some((o: any) => overlaps(o.ipRange, nets[i].ipRange))) return 'OverlappingNetworks';
  }
  // Rules spanning several VMs.
  const vms = ws.filter((w) => w.kind.Vm).map((w) => w.kind.Vm);
  for (let i = 0; i < vms.length; i++) {
    const earlier = vms.slice(0, i);
    for (const m of vms[i].mounts) {
      if (byName(m.workload)?.kind.Disk && earlier.some((o) => o.mounts.some((om: any) => om.workload === m.workload))) {
        return 'DiskAttachedTwice';
      }
    }
    if (vms[i].publicIp && earlier.some((o) => o.publicIp === vms[i].publicIp)) return 'PublicIpUsedTwice';
    for (const a of vms[i].networks) {
      if (earlier.some((o) => o.networks.some((oa: any) => oa.network === a.network && u32(oa.ip) === u32(a.ip)))) {
        return 'DuplicateIp';
      }
    }
  }
  return null;
}

function checkVm(vm: any, byName: (n: string) => any): string | null {
  if (isZeroHex(vm.image.rootHash)) return 'ImageHashZero';
  if (!vm.image.source || !isPrintable(vm.image.source)) return 'InvalidImageSource';
  if (vm.vcpus < LIMITS.MIN_VCPUS || vm.vcpus > LIMITS.MAX_VCPUS) return 'VcpusOutOfRange';
  if (vm.memoryMib < LIMITS.MIN_VM_MEMORY_MIB || vm.memoryMib > LIMITS.MAX_VM_MEMORY_MIB) return 'MemoryOutOfRange';
  if (vm.rootfsMib < LIMITS.MIN_ROOTFS_MIB || vm.rootfsMib > LIMITS.MAX_ROOTFS_MIB) return 'RootfsOutOfRange';
  for (let i = 0; i < vm.mounts.length; i++) {
    const m = vm.mounts[i];
    const target = byName(m.workload);
    if (!target) return 'UnknownMountTarget';
    if (!target.kind.Disk && !target.kind.Volume) return 'MountTargetNotDiskOrVolume';
    if (!validMountPath(m.path)) return 'InvalidMountPath';
    const earlier = vm.mounts.slice(0, i);
    if (earlier.some((o: any) => o.path === m.path)) return 'DuplicateMountPath';
    if (earlier.some((o: any) => o.workload === m.workload)) return 'DuplicateMountTarget';
  }
  for (let i = 0; i < vm.env.length; i++) {
    const e = vm.env[i];
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(e.key)) return 'InvalidEnvKey';
    if (vm.env.slice(0, i).some((o: any) => o.key === e.key)) return 'DuplicateEnvKey';
    if (!noNul(e.value)) return 'InvalidText';
    if (e.value.startsWith(SEALED_ENV_PREFIX) && !wellFormedSealedEnvValue(e.value)) return 'InvalidSealedEnvValue';
  }
  if (!noNul(vm.entrypoint)) return 'InvalidText';
  for (const k of vm.sshKeys) {
    const okStart = k.startsWith('ssh-') || k.startsWith('ecdsa-') || k.startsWith('sk-');
    if (!okStart || ![...utf8.encode(k)].every((c) => c >= 0x20 && c < 0x7f)) return 'InvalidSshKey';
  }
  for (let i = 0; i < vm.networks.length; i++) {
    const a = vm.networks[i];
    const target = byName(a.network);
    if (!target) return 'UnknownNetwork';
    const net = target.kind.Network;
    if (!net) return 'NotANetwork';
    if (vm.networks.slice(0, i).some((o: any) => o.network === a.network)) return 'DuplicateNetworkAttachment';
    if (!contains(net.subnet, a.ip)) return 'IpOutsideSubnet';
    if (u32(a.ip) === network(net.subnet) || u32(a.ip) === broadcast(net.subnet) || a.ip[3] === 1) return 'ReservedIp';
  }
  if (vm.publicIp !== null) {
    const target = byName(vm.publicIp);
    if (!target) return 'UnknownPublicIp';
    if (!target.kind.PublicIp) return 'NotAPublicIp';
  }
  return null;
}

/** `is_valid_dns_label`: 1-63 bytes of `[a-z0-9-]`, no hyphen at either end; lowercase only. */
const isDnsLabel = (label: string) =>
  /^[a-z0-9-]{1,63}$/.test(label) && !label.startsWith('-') && !label.endsWith('-');
/** `is_valid_fqdn`: at least two valid labels, at most 253 bytes (no trailing dot). */
const isFqdn = (domain: string) =>
  byteLen(domain) <= LIMITS.MAX_FQDN_LEN && domain.includes('.') && domain.split('.').every(isDnsLabel);

/** `GatewaySpec::check`. */
function checkGateway(g: any, byName: (n: string) => any): string | null {
  if (g.host.Name !== undefined) {
    if (!isDnsLabel(g.host.Name)) return 'InvalidGatewayName';
  } else if (!isFqdn(g.host.Fqdn)) {
    return 'InvalidGatewayFqdn';
  }
  if (g.backends.length === 0) return 'NoGatewayBackends';
  let range: Cidr | null = null;
  if (g.network !== null) {
    const target = byName(g.network);
    if (!target) return 'UnknownNetwork';
    if (!target.kind.Network) return 'NotANetwork';
    range = target.kind.Network.ipRange;
  }
  for (const backend of g.backends) {
    if ((backend.V4 ?? backend.V6).port === 0) return 'GatewayBackendNotAllowed';
    if (range) {
      // The node dials backends from inside the network, which is IPv4 only.
      if (!backend.V4 || !contains(range, backend.V4.ip)) return 'GatewayBackendOutsideNetwork';
    } else {
      // Without a network the node dials out from its public side: never its own loopback,
      // private or link-local neighbours. Documentation addresses route nowhere, so they pass.
      const special = backend.V4 ? classifyIpv4(backend.V4.ip) : classifyIpv6(backend.V6.ip);
      if (special !== null && special !== 'Documentation') return 'GatewayBackendNotAllowed';
    }
  }
  return null;
}

/** `HealthCheckSpec::check`. */
function checkHealthCheck(h: any, byName: (n: string) => any): string | null {
  const target = byName(h.vm);
  if (!target) return 'UnknownHealthCheckTarget';
  if (!target.kind.Vm) return 'HealthCheckTargetNotAVm';
  const timingOk = h.intervalSecs >= LIMITS.MIN_HEALTH_INTERVAL_SECS && h.intervalSecs <= LIMITS.MAX_HEALTH_INTERVAL_SECS
    && h.timeoutSecs >= 1 && h.timeoutSecs <= Math.min(h.intervalSecs, LIMITS.MAX_HEALTH_TIMEOUT_SECS)
    && h.retries >= 1 && h.retries <= LIMITS.MAX_HEALTH_RETRIES
    && h.startPeriodSecs <= LIMITS.MAX_HEALTH_START_PERIOD_SECS;
  if (!timingOk) return 'HealthTimingOutOfRange';
  const probe = h.probe;
  let probeOk: boolean;
  if (probe.Command !== undefined) {
    // Not blank: `u8::is_ascii_whitespace` is space, \t, \n, \f and \r (not \v).
    probeOk = probe.Command !== '' && noNul(probe.Command) && !/^[ \t\n\f\r]*$/.test(probe.Command);
  } else if (probe.Tcp !== undefined) {
    probeOk = probe.Tcp !== 0;
  } else {
    probeOk = probe.Http.port !== 0 && probe.Http.path.startsWith('/') && isPrintable(probe.Http.path);
  }
  return probeOk ? null : 'InvalidHealthProbe';
}

/** `classify_ipv4`: the special-purpose block `ip` is in, or null for a global unicast address. */
function classifyIpv4(ip: number[]): string | null {
  const table: [number[], number, string][] = [
    [[0, 0, 0, 0], 32, 'Unspecified'],
    [[255, 255, 255, 255], 32, 'Broadcast'],
    [[0, 0, 0, 0], 8, 'ThisNetwork'],
    [[10, 0, 0, 0], 8, 'Private'],
    [[100, 64, 0, 0], 10, 'SharedCgnat'],
    [[127, 0, 0, 0], 8, 'Loopback'],
    [[169, 254, 0, 0], 16, 'LinkLocal'],
    [[172, 16, 0, 0], 12, 'Private'],
    [[192, 0, 0, 0], 24, 'ProtocolAssignment'],
    [[192, 0, 2, 0], 24, 'Documentation'],
    [[192, 88, 99, 0], 24, 'Relay6to4'],
    [[192, 168, 0, 0], 16, 'Private'],
    [[198, 18, 0, 0], 15, 'Benchmarking'],
    [[198, 51, 100, 0], 24, 'Documentation'],
    [[203, 0, 113, 0], 24, 'Documentation'],
    [[224, 0, 0, 0], 4, 'Multicast'],
    [[240, 0, 0, 0], 4, 'Reserved'],
  ];
  return table.find(([net, prefixLen]) => contains({ ip: net, prefixLen }, ip))?.[2] ?? null;
}

/** `classify_ipv6`: the special-purpose block `ip` (16 bytes) is in, or null for global unicast. */
function classifyIpv6(ip: number[]): string | null {
  const value = ip.reduce((a, byte) => (a << 8n) | BigInt(byte), 0n);
  const inBlock = (net: bigint, prefixLen: number) => value >> BigInt(128 - prefixLen) === net >> BigInt(128 - prefixLen);
  const table: [bigint, number, string][] = [
    [0n, 128, 'Unspecified'],
    [1n, 128, 'Loopback'],
    [0xff00n << 112n, 8, 'Multicast'],
    [0xfe80n << 112n, 10, 'LinkLocal'],
    [0xfc00n << 112n, 7, 'Private'],
    [0x2001_0db8n << 96n, 32, 'Documentation'],
    [0x3fffn << 112n, 20, 'Documentation'],
    [0x2001_0002n << 96n, 48, 'Benchmarking'],
    [0x2001_0000n << 96n, 32, 'Teredo'],
    [0x2001_0000n << 96n, 23, 'ProtocolAssignment'],
    [0x2002n << 112n, 16, 'Relay6to4'],
  ];
  const found = table.find(([net, prefixLen]) => inBlock(net, prefixLen));
  if (found) return found[2];
  return inBlock(0x2000n << 112n, 3) ? null : 'NotGlobalUnicast';
}

function validMountPath(p: string): boolean {
  return p.length > 1 && p.startsWith('/') && !p.endsWith('/') && /^[A-Za-z0-9._/-]+$/.test(p)
    && p.split('/').slice(1).every((seg) => seg !== '' && seg !== '.' && seg !== '..');
}

/** Two subnets share an address exactly when one holds the other's first address. */
function overlaps(a: Cidr, b: Cidr): boolean {
  const holds = (c: Cidr, addr: number) => ((addr & mask(c.prefixLen)) >>> 0) === network(c);
  return holds(a, network(b)) || holds(b, network(a));
}

function checkNetwork(net: any): string | null {
  if (!(net.ipRange.prefixLen === 16 && isPrivate(net.ipRange.ip))) return 'InvalidIpRange';
  if (!hostBitsClear(net.ipRange)) return 'CidrHostBitsSet';
  if (net.subnet.prefixLen !== 24) return 'SubnetNotSlash24';
  if (!hostBitsClear(net.subnet)) return 'CidrHostBitsSet';
  if (!contains(net.ipRange, net.subnet.ip)) return 'SubnetOutsideRange';
  if (net.listenPort === 0) return 'ListenPortZero';
  const keys = new Set<string>();
  for (const peer of net.peers) {
    if (isZeroHex(peer.publicKey)) return 'PeerKeyZero';
    if (keys.has(peer.publicKey)) return 'DuplicatePeer';
    keys.add(peer.publicKey);
    if (peer.allowedIps.length === 0 || !peer.allowedIps.every((c: Cidr) => c.prefixLen <= 32)) return 'InvalidAllowedIps';
    const ep = peer.endpoint && (peer.endpoint.V4 ?? peer.endpoint.V6);
    if (ep && ep.port === 0) return 'InvalidPeerEndpoint';
    if (peer.allowedIps.some((c: Cidr) => overlaps(net.subnet, c) && c.prefixLen >= net.subnet.prefixLen)) {
      return 'AllowedIpsInsideOwnSubnet';
    }
  }
  const allowed: Cidr[] = net.peers.flatMap((p: any) => p.allowedIps);
  for (let i = 0; i < allowed.length; i++) {
    if (allowed.slice(0, i).some((o) => overlaps(o, allowed[i]))) return 'OverlappingAllowedIps';
  }
  if ((net.privateKey.length - 2) / 2 !== LIMITS.SEALED_WIREGUARD_KEY_LEN) return 'SealedKeyWrongLength';
  return null;
}

export type Required = { cru: bigint; mru: bigint; sru: bigint; hru: bigint; publicIpv4: number; gatewayHosts: number };

/** `DeploymentSpec::required_resources`: what the chain reserves (and bills) for the spec. */
export function requiredResources(spec: ChainSpec): Required {
  const r: Required = { cru: 0n, mru: 0n, sru: 0n, hru: 0n, publicIpv4: 0, gatewayHosts: 0 };
  for (const w of spec.workloads) {
    const [kind, b] = Object.entries(w.kind)[0];
    if (kind === 'Vm') {
      r.cru += BigInt(b.vcpus);
      r.mru += BigInt(b.memoryMib) * MIB;
      r.sru += BigInt(b.rootfsMib) * MIB;
    } else if (kind === 'Disk' || kind === 'Volume') {
      r.sru += BigInt(b.sizeMib) * MIB;
    } else if (kind === 'PublicIp' && b.v4) {
      r.publicIpv4 += 1;
    } else if (kind === 'Gateway') {
      r.gatewayHosts += 1; // billed per host-hour
    } // a network or a health check reserves nothing
  }
  return r;
}

// ---- gateway hosts on the target node: `Pallet::gateway_host_keys` and
// `ensure_gateway_hosts_free` of pallets/deployments, checked after the spec rules (as the chain
// does) once a node is picked, since they need its domain and deployments.GatewayHosts.

/** A gateway workload's claim: the host clients use and its `GatewayHosts` key (0x hex). */
export type GatewayHostKey = { workload: string; host: string; key: string; perNode: boolean };

/** What the chain would answer: a `deployments` error (`InvalidSpec` with its `SpecError`). */
export type GatewayHostProblem = { error: string; specError?: string; message: string };

/** blake2b with a 32-byte output (`sp_crypto_hashing::blake2_256`), passed in so this file needs no crypto package. */
export type Blake2_256 = (data: Uint8Array) => Uint8Array;

// `to_ascii_lowercase`: only A-Z change.
const asciiLower = (b: Uint8Array) => b.map((c) => (c >= 0x41 && c <= 0x5a ? c + 0x20 : c));
const fromUtf8 = new TextDecoder();
const bytesHex = (b: Uint8Array) => `0x${Array.from(b, (c) => c.toString(16).padStart(2, '0')).join('')}`;
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
const domainBytes = (d: string | Uint8Array | null): Uint8Array | null => (d === null ? null : typeof d === 'string' ? utf8.encode(d) : d);

/** `gateway_full_host`: `<name>.<node domain, lowercased>` or the FQDN; null for a name without a domain. */
export function gatewayFullHost(host: { Name?: string; Fqdn?: string }, nodeDomain: string | Uint8Array | null): Uint8Array | null {
  const domain = domainBytes(nodeDomain);
  if (host.Name !== undefined) {
    if (domain === null) return null;
    return concat(utf8.encode(host.Name), utf8.encode('.'), asciiLower(domain));
  }
  return utf8.encode(host.Fqdn!);
}

/**
 * What `gateway_host_key` hashes: `zos/gw-name/<full host>` for a name (unique per domain) and
 * for an FQDN at or under the node's domain (so it cannot take over a name), else
 * `zos/gw-fqdn/<node id, u32 LE><fqdn>` (unique per node). Null where the chain has no key.
 */
export function gatewayHostPreimage(node: number, host: { Name?: string; Fqdn?: string }, nodeDomain: string | Uint8Array | null): { preimage: Uint8Array; full: Uint8Array; perNode: boolean } | null {
  const full = gatewayFullHost(host, nodeDomain);
  if (full === null || full.length > LIMITS.MAX_FQDN_LEN) return null;
  const raw = domainBytes(nodeDomain);
  const domain = raw === null ? null : asciiLower(raw);
  const endsWith = (d: Uint8Array) => d.every((c, i) => full[full.length - d.length + i] === c);
  const underDomain = domain !== null && (
    (full.length === domain.length && endsWith(domain))
    || (full.length > domain.length && endsWith(domain) && full[full.length - domain.length - 1] === 0x2e)
  );
  if (host.Name !== undefined || underDomain) {
    return { preimage: concat(utf8.encode('zos/gw-name/'), full), full, perNode: false };
  }
  const le = new Uint8Array(4);
  new DataView(le.buffer).setUint32(0, node, true);
  return { preimage: concat(utf8.encode('zos/gw-fqdn/'), le, full), full, perNode: true };
}

/** `Pallet::gateway_host_keys`: each gateway's key on `node`, in spec order, or the error the chain raises first. */
export function gatewayHostKeys(spec: ChainSpec, node: number, nodeDomain: string | Uint8Array | null, blake2_256: Blake2_256): { keys: GatewayHostKey[]; problem: null } | { keys: null; problem: GatewayHostProblem } {
  const keys: GatewayHostKey[] = [];
  for (const w of spec.workloads) {
    const g = w.kind.Gateway;
    if (!g) continue;
    const claim = gatewayHostPreimage(node, g.host, nodeDomain);
    if (claim === null) {
      if (nodeDomain === null && g.host.Name !== undefined) {
        return { keys: null, problem: {
          error: 'NodeHasNoGatewayDomain',
          message: `gateway \`${w.name}\` asks for the name \`${g.host.Name}\` under node ${node}'s domain, but node ${node}'s public config declares no domain (only FQDN hosts can be served there)`,
        } };
      }
      return { keys: null, problem: {
        error: 'InvalidSpec',
        specError: 'InvalidGatewayName',
        message: `gateway \`${w.name}\`: \`${g.host.Name ?? g.host.Fqdn}\` under node ${node}'s domain is longer than a DNS name's ${LIMITS.MAX_FQDN_LEN} bytes`,
      } };
    }
    const entry = { workload: w.name, host: fromUtf8.decode(claim.full), key: bytesHex(blake2_256(claim.preimage)), perNode: claim.perNode };
    // A name and the FQDN it spells under the node's domain are one host.
    const twin = keys.find((k) => k.key === entry.key);
    if (twin) {
      return { keys: null, problem: {
        error: 'InvalidSpec',
        specError: 'DuplicateGatewayHost',
        message: `gateways \`${twin.workload}\` and \`${w.name}\` both serve \`${entry.host}\` on node ${node}`,
      } };
    }
    keys.push(entry);
  }
  return { keys, problem: null };
}

/**
 * `ensure_gateway_hosts_free` as `deployments.create` (`contractId` null: a new contract holds
 * nothing) and `propose_update` (the contract may keep its own hosts) run it. `holderOf` gives
 * the contract a `GatewayHosts` key names, if any.
 */
export function gatewayHostProblem(
  spec: ChainSpec,
  node: number,
  nodeDomain: string | Uint8Array | null,
  holderOf: (key: string) => number | null | undefined,
  contractId: number | null,
  blake2_256: Blake2_256,
): GatewayHostProblem | null {
  const { keys, problem } = gatewayHostKeys(spec, node, nodeDomain, blake2_256);
  if (problem) return problem;
  for (const k of keys) {
    const holder = holderOf(k.key);
    if (holder === null || holder === undefined || holder === contractId) continue;
    const scope = k.perNode ? `an FQDN is unique per node, here node ${node}` : 'a name is unique per gateway domain, whichever node serves it';
    return {
      error: 'GatewayHostTaken',
      message: `host \`${k.host}\` (gateway \`${k.workload}\`) is already held by another contract, contract ${holder}: ${scope}`,
    };
  }
  return null;
}

// ---- chain value -> readable form (for display, diffs and the update editor)

const hex = (v: any): string => (typeof v === 'string' ? v : v.toHex());
const quad = (v: any): string => {
  const bytes: number[] = typeof v === 'string' ? (v.slice(2).match(/../g) ?? []).map((b) => parseInt(b, 16)) : [...v];
  return bytes.join('.');
};
const cidr = (c: any) => `${quad(c.ip)}/${Number(c.prefixLen)}`;
const text = (v: any): string => (typeof v === 'string' ? v : v.toUtf8());
const num = (v: any): number => (typeof v === 'number' ? v : v.toNumber());

/** A decoded `DeploymentSpec` codec as the readable object deployers write. */
export function readableSpec(spec: any): Record<string, unknown> {
  return {
    version: num(spec.version),
    metadata: text(spec.metadata),
    workloads: spec.workloads.map((w: any) => ({ name: text(w.name), kind: readableKind(w.kind) })),
  };
}

function readableKind(kind: any): Record<string, unknown> {
  const t: string = kind.type;
  const b = kind.value;
  switch (t) {
    case 'Disk': return { disk: { size_mib: num(b.sizeMib) } };
    case 'Volume': return { volume: { size_mib: num(b.sizeMib) } };
    case 'PublicIp': return { public_ip: { v4: b.v4.isTrue, v6: b.v6.isTrue } };
    case 'Network': return {
      network: {
        ip_range: cidr(b.ipRange),
        subnet: cidr(b.subnet),
        listen_port: num(b.listenPort),
        peers: b.peers.map((p: any) => ({
          public_key: hex(p.publicKey),
          endpoint: p.endpoint.isNone ? null : endpointText(p.endpoint.unwrap()),
          allowed_ips: p.allowedIps.map(cidr),
        })),
        private_key: hex(b.privateKey),
        outbound_internet: b.outboundInternet.isTrue,
      },
    };
    case 'Vm': return {
      vm: {
        image: { root_hash: hex(b.image.rootHash), source: text(b.image.source) },
        vcpus: num(b.vcpus),
        memory_mib: num(b.memoryMib),
        rootfs_mib: num(b.rootfsMib),
        mounts: b.mounts.map((m: any) => ({ workload: text(m.workload), path: text(m.path) })),
        env: b.env.map((e: any) => ({ key: text(e.key), value: text(e.value) })),
        entrypoint: text(b.entrypoint),
        ssh_keys: b.sshKeys.map(text),
        networks: b.networks.map((n: any) => ({ network: text(n.network), ip: quad(n.ip) })),
        public_ip: b.publicIp.isNone ? null : text(b.publicIp.unwrap()),
        ...(b.overlay.isTrue ? { overlay: true } : {}),
      },
    };
    case 'Gateway': return {
      gateway: {
        host: b.host.isName ? { name: text(b.host.asName) } : { fqdn: text(b.host.asFqdn) },
        network: b.network.isNone ? null : text(b.network.unwrap()),
        backends: b.backends.map(endpointText),
        tls_passthrough: b.tlsPassthrough.isTrue,
      },
    };
    case 'HealthCheck': return {
      health_check: {
        vm: text(b.vm),
        probe: readableProbe(b.probe),
        interval_secs: num(b.intervalSecs),
        timeout_secs: num(b.timeoutSecs),
        retries: num(b.retries),
        start_period_secs: num(b.startPeriodSecs),
        on_unhealthy: b.onUnhealthy.isReport ? 'report' : 'restart',
      },
    };
  }
  return { [t]: kind.toJSON() };
}

/** A `HealthProbe` as the file form writes it. */
function readableProbe(p: any): Record<string, unknown> {
  if (p.isCommand) return { command: text(p.asCommand) };
  if (p.isTcp) return { tcp: num(p.asTcp) };
  return { http: { port: num(p.asHttp.port), path: text(p.asHttp.path) } };
}

/** A `SocketAddress` as the CLI writes it (Rust's `Display`): "10.20.1.2:80", "[2001:db8::7]:443". */
function endpointText(e: any): string {
  const v = e.value;
  if (e.type === 'V4') return `${quad(v.ip)}:${num(v.port)}`;
  return `[${ipv6Text([...v.ip])}]:${num(v.port)}`;
}

/** Rust's `Ipv6Addr` display: an IPv4-mapped address as `::ffff:a.b.c.d`, else the first
 * longest run of two or more zero groups written `::`. */
function ipv6Text(bytes: number[]): string {
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i] << 8) | bytes[2 * i + 1]);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) return `::ffff:${bytes.slice(12).join('.')}`;
  let longest = { start: 0, len: 0 };
  let run = { start: 0, len: 0 };
  groups.forEach((g, i) => {
    run = g === 0 ? { start: run.len === 0 ? i : run.start, len: run.len + 1 } : { start: 0, len: 0 };
    if (run.len > longest.len) longest = run;
  });
  const hexGroups = (gs: number[]) => gs.map((g) => g.toString(16)).join(':');
  if (longest.len < 2) return hexGroups(groups);
  return `${hexGroups(groups.slice(0, longest.start))}::${hexGroups(groups.slice(longest.start + longest.len))}`;
}

/** Line diff (LCS) of two texts: [' ' | '-' | '+', line][]. */
export function diffLines(a: string, b: string): [string, string][] {
  const x = a.split('\n');
  const y = b.split('\n');
  const n = x.length;
  const m = y.length;
  const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out: [string, string][] = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) {
      out.push([' ', x[i]]);
      i++;
      j++;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) {
      out.push(['-', x[i++]]);
    } else {
      out.push(['+', y[j++]]);
    }
  }
  while (i < n) out.push(['-', x[i++]]);
  while (j < m) out.push(['+', y[j++]]);
  return out;
}

export const EXAMPLE_SPEC = {
  version: 0,
  metadata: 'a disk and a small VM',
  workloads: [
    { name: 'data', kind: { disk: { size_mib: 1024 } } },
    {
      name: 'hello',
      kind: {
        vm: {
          image: { root_hash: `0x${'00'.repeat(31)}ff`, source: 'http://127.0.0.1:8420' },
          vcpus: 1,
          memory_mib: 256,
          rootfs_mib: 256,
          mounts: [{ workload: 'data', path: '/data' }],
          env: [{ key: 'GREETING_TARGET', value: 'a busybox VM' }],
          entrypoint: "/bin/sh -c 'echo hello; sleep infinity'",
        },
      },
    },
  ],
};

export { snake, camel };
/** Doc lines of `SpecError` (`zos_primitives::spec`), for runtimes whose metadata leaves type docs out. */
export const SPEC_ERROR_DOCS: Record<string, string> = {
  NoWorkloads: 'A spec needs at least one workload.',
  MetadataNotUtf8: 'Metadata must be UTF-8.',
  InvalidWorkloadName: 'A workload name must be 1-36 bytes of `[a-z0-9_-]`.',
  DuplicateWorkloadName: 'Two workloads have the same name.',
  ImageHashZero: 'The image root hash is all zeros.',
  InvalidImageSource: 'The image source must be non-empty printable ASCII without spaces.',
  VcpusOutOfRange: 'vCPUs must be within `MIN_VCPUS..=MAX_VCPUS`.',
  MemoryOutOfRange: 'VM memory must be within `MIN_VM_MEMORY_MIB..=MAX_VM_MEMORY_MIB`.',
  RootfsOutOfRange: 'Root filesystem size must be within `MIN_ROOTFS_MIB..=MAX_ROOTFS_MIB`.',
  DiskSizeOutOfRange: 'Disk size must be within `MIN_DISK_MIB..=MAX_DISK_MIB`.',
  VolumeSizeOutOfRange: 'Volume size must be within `MIN_DISK_MIB..=MAX_DISK_MIB`.',
  UnknownMountTarget: 'A mount names no workload of the spec.',
  MountTargetNotDiskOrVolume: 'A mount names a workload that is neither a disk nor a volume.',
  InvalidMountPath: 'A mount point must be an absolute path of `[A-Za-z0-9._/-]` without `..` or `//`, not `/`.',
  DuplicateMountPath: 'One VM mounts two things at the same path.',
  DuplicateMountTarget: 'One VM mounts the same disk or volume twice.',
  DiskAttachedTwice: 'A disk (a raw block device) is attached to more than one VM.',
  InvalidEnvKey: 'An environment variable name must match `[A-Za-z_][A-Za-z0-9_]*`.',
  DuplicateEnvKey: 'One VM sets the same environment variable twice.',
  InvalidText: 'An environment value or the entrypoint is not UTF-8, or contains a NUL byte.',
  InvalidSshKey: 'An SSH key must be one printable line starting with `ssh-` or `ecdsa-`.',
  UnknownNetwork: 'A network attachment names no workload of the spec.',
  NotANetwork: 'A network attachment names a workload that is not a network.',
  DuplicateNetworkAttachment: 'One VM is attached to the same network twice.',
  IpOutsideSubnet: "A VM's address is outside the network's subnet on this node.",
  ReservedIp: "A VM's address is the subnet's network, gateway (`.1`) or broadcast address.",
  DuplicateIp: 'Two VMs have the same address in one network.',
  UnknownPublicIp: "A VM's public IP names no workload of the spec.",
  NotAPublicIp: "A VM's public IP names a workload that is not a public IP.",
  PublicIpUsedTwice: 'A public IP workload is used by more than one VM.',
  PublicIpWithoutFamily: 'A public IP workload must ask for IPv4, IPv6 or both.',
  TooManyPublicIpv4: 'More than `MAX_PUBLIC_IPV4` public IPv4 addresses requested.',
  InvalidIpRange: "A network's range must be a private (RFC 1918) /16.",
  CidrHostBitsSet: 'A subnet or range has host bits set (it must be written as its network address).',
  SubnetNotSlash24: "A network's subnet must be a /24.",
  SubnetOutsideRange: "A network's subnet is not inside its range.",
  ListenPortZero: "A network's listen port must not be 0.",
  PeerKeyZero: "A peer's public key is all zeros.",
  DuplicatePeer: 'Two peers of one network have the same public key.',
  InvalidAllowedIps: 'A peer needs at least one allowed-IP subnet, each with a prefix of at most 32.',
  InvalidPeerEndpoint: "A peer endpoint's port must not be 0.",
  SealedKeyWrongLength: "A network's sealed private key must be exactly `SEALED_WIREGUARD_KEY_LEN` bytes.",
  OverlappingAllowedIps: 'Two peers of one network have overlapping allowed IPs (WireGuard would silently send that part to only one of them).',
  AllowedIpsInsideOwnSubnet: "A peer's allowed IPs lie inside this node's own subnet (the peer could pose as local VMs).",
  OverlappingNetworks: 'Two networks of one spec have overlapping ranges (a VM on both could not route both).',
  InvalidGatewayName: 'A gateway name must be one DNS label: 1-63 bytes of `[a-z0-9-]`, no hyphen at either end.',
  InvalidGatewayFqdn: 'A gateway FQDN must be a lowercase DNS name of at least two labels, at most 253 bytes.',
  NoGatewayBackends: 'A gateway needs at least one backend.',
  GatewayBackendNotAllowed: 'A gateway backend has port 0, or (without a network) is not a public address: loopback, private, link-local and similar addresses are refused.',
  GatewayBackendOutsideNetwork: 'A gateway backend is outside the range of the network the gateway names (or is IPv6).',
  DuplicateGatewayHost: 'Two gateways of one spec serve the same host.',
  UnknownHealthCheckTarget: 'A health check names no workload of the spec.',
  HealthCheckTargetNotAVm: 'A health check names a workload that is not a VM.',
  DuplicateHealthCheck: 'One VM has two health checks.',
  HealthTimingOutOfRange: "A health check's interval must be 5-3600 s, its timeout 1 s to the interval (at most 60 s), its retries 1-20 and its start period at most 3600 s.",
  InvalidHealthProbe: 'A health probe needs a non-zero port, a non-blank UTF-8 command, or an HTTP path of printable ASCII starting with `/`.',
  InvalidSealedEnvValue: 'An environment value starting with `zos-sealed:v1:` must continue with the padded base64 of a sealed box (see `zos seal-env`).',
};

/** How an environment value sealed to the node starts (`zos seal-env`); base64 follows. */
export const SEALED_ENV_PREFIX = 'zos-sealed:v1:';

/** The chain's shape check of a sealed value: padded standard base64, long enough for a sealed
 * box (48 bytes) holding the 16-byte binding tag. */
function wellFormedSealedEnvValue(value: string): boolean {
  const b64 = value.slice(SEALED_ENV_PREFIX.length);
  const padding = b64.length - b64.replace(/=+$/, '').length;
  const body = b64.slice(0, b64.length - padding);
  return b64.length % 4 === 0 && padding <= 2 && /^[A-Za-z0-9+/]*$/.test(body)
    && Math.max(0, (b64.length / 4) * 3 - padding) >= 48 + 16;
}
