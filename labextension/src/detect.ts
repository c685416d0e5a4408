/** What the browser knows of this machine's GPU: WebGPU's adapter, else WebGL's renderer. */
export interface BrowserGPU {
  api: 'webgpu' | 'webgl' | 'none';
  vendor: string | null;
  renderer: string | null;
  note: string | null;
}

/** The seed's detectGPUBrowser(): it never throws; "none" says why. */
export async function detectGPUBrowser(): Promise<BrowserGPU> {
  const gpu = (navigator as any).gpu;
  if (gpu) {
    try {
      const adapter = await gpu.requestAdapter();
      if (adapter) {
        const info =
          adapter.info ??
          (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
        return {
          api: 'webgpu',
          vendor: info.vendor || null,
          renderer: info.description || info.architecture || info.device || null,
          note: null
        };
      }
    } catch {
      // falls through to WebGL
    }
  }
  try {
    const canvas = document.createElement('canvas');
    const gl = (canvas.getContext('webgl2') ?? canvas.getContext('webgl')) as
      | WebGLRenderingContext
      | null;
    if (gl) {
      const debug = gl.getExtension('WEBGL_debug_renderer_info');
      const vendor = debug ? gl.getParameter(debug.UNMASKED_VENDOR_WEBGL) : gl.getParameter(gl.VENDOR);
      const renderer = debug
        ? gl.getParameter(debug.UNMASKED_RENDERER_WEBGL)
        : gl.getParameter(gl.RENDERER);
      return { api: 'webgl', vendor: String(vendor), renderer: String(renderer), note: null };
    }
  } catch {
    // no WebGL either
  }
  return {
    api: 'none',
    vendor: null,
    renderer: null,
    note: 'this browser exposes neither WebGPU nor WebGL'
  };
}
