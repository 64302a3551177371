// Stands in for @polkadot/wasm-crypto-init in the bundle (build.mjs points the import here). The
// package carries @polkadot/wasm-crypto's WebAssembly as a compressed base64 string that every
// page load decodes and inflates in JavaScript before anything else runs; here it is the file
// crypto.wasm next to index.html (written by build.mjs), compiled by the browser as it arrives.

type WasmResult = { error: string | null; type: 'wasm' | 'none'; wasm: WebAssembly.Exports | null };

export async function createWasm(wbg: WebAssembly.ModuleImports): Promise<WasmResult> {
  const url = new URL('crypto.wasm', document.baseURI);
  const imports = { wbg };
  try {
    const { instance } = await WebAssembly.instantiateStreaming(fetch(url), imports).catch(async () =>
      // A server that does not say application/wasm: compile from the bytes.
      WebAssembly.instantiate(await (await fetch(url)).arrayBuffer(), imports));
    return { error: null, type: 'wasm', wasm: instance.exports };
  } catch (e) {
    const error = `FATAL: Unable to initialize @polkadot/wasm-crypto from ${url}: ${(e as Error).message}`;
    console.error(error);
    return { error, type: 'none', wasm: null };
  }
}
