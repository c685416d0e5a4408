import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** An error answer of the QUBIX API: its code and message (DESIGN.md §6). */
export class QubixAPIError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {}
  ) {
    super(message);
  }

  /** What to do about it, when the server said (the agent's `details.nextStep`). */
  get nextStep(): string | null {
    const step = this.details.nextStep;
    return typeof step === 'string' ? step : null;
  }
}

/**
 * Calls this Jupyter server's QUBIX API with the Lab's own credentials: ServerConnection adds
 * the token or cookie and the XSRF header the agent routes check.
 */
export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'qubix', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new QubixAPIError(0, 'network_error', `the Jupyter server did not answer: ${error}`);
  }
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new QubixAPIError(
      response.status,
      error.code ?? 'http_error',
      error.message ?? `HTTP ${response.status}`,
      error.details ?? {}
    );
  }
  return body as T;
}

export interface NativeGPU {
  index: number;
  vendor: string;
  model: string;
  vram: number;
  driver: string | null;
  cudaCapability: string | null;
}

export interface DetectResponse {
  source: 'nvml' | 'nvidia-smi' | 'none';
  gpus: NativeGPU[];
  count: number;
  cpuOnly: boolean;
  label: string;
  notes: string[];
}

export type SharingState =
  | 'idle'
  | 'detecting'
  | 'registering'
  | 'starting'
  | 'online'
  | 'stopping'
  | 'error';

export interface AgentStatus {
  state: SharingState;
  marketUrl: string;
  error: string | null;
  nextStep: string | null;
  workerId: string | null;
  provider: { status: string; pricePerHour: number; isOnline: boolean } | null;
  earningsToday: number | null;
}

export interface MarketSummary {
  marketUrl: string;
  listedOffers: number;
  onlineOffers: number;
  minPrice: number | null;
  maxPrice: number | null;
}

/** POST agent/install-command: the command that shares another machine with this wallet. */
export interface InstallCommand {
  command: string;
  marketUrl: string;
  price: number;
  tokenId: string;
  expiresAt: string;
}

export interface HealthResponse {
  status: string;
  role: 'market' | 'agent' | 'both';
}
