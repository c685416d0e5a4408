import { Widget } from '@lumino/widgets';
import { ISignal, Signal } from '@lumino/signaling';

import {
  AgentStatus,
  DetectResponse,
  MarketSummary,
  QubixAPIError,
  requestAPI
} from './api';
import { BrowserGPU, detectGPUBrowser } from './detect';

export interface PanelSettings {
  marketUrl: string;
  defaultPrice: number;
}

const STATE_LABELS: Record<string, string> = {
  idle: 'Not sharing',
  detecting: 'Detecting the GPU…',
  registering: 'Registering with the market…',
  starting: 'Starting the worker…',
  online: 'Online: sharing this machine',
  stopping: 'Stopping…',
  error: 'Sharing failed',
  'no-agent': 'No QUBIX agent on this Jupyter server'
};

const BUSY = new Set(['detecting', 'registering', 'starting', 'stopping']);

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string> = {},
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** The pip + qubix provide command for a machine without a local agent (the installer). */
export function installerCommand(marketUrl: string, price: number): string {
  const market = marketUrl || '<market URL>';
  return (
    'pip install qubix-jupyter && qubix wallet new --seed-file ~/.qubix/seed && ' +
    `qubix provide --market ${market} --price ${price} --seed-file ~/.qubix/seed`
  );
}

/** The QUBIX sidebar: marketplace summary, detected GPUs and Share my GPU. */
export class QubixPanel extends Widget {
  constructor(settings: PanelSettings) {
    super();
    this.id = 'qubix-panel';
    this.addClass('qx-panel');
    this.title.caption = 'QUBIX: GPU marketplace';
    this._settings = settings;
    this._build();
  }

  /** Sharing's state, each time it changes (the status bar listens). */
  get changed(): ISignal<this, AgentStatus | null> {
    return this._changed;
  }

  get status(): AgentStatus | null {
    return this._status;
  }

  get agentAvailable(): boolean {
    return this._agent;
  }

  set settings(settings: PanelSettings) {
    const priceUntouched = this._price.value === String(this._settings.defaultPrice);
    this._settings = settings;
    if (priceUntouched) {
      this._price.value = String(settings.defaultPrice);
    }
    void this.refresh();
  }

  private _build(): void {
    const root = this.node;
    root.setAttribute('role', 'region');
    root.setAttribute('aria-label', 'QUBIX marketplace and Share my GPU');
    root.appendChild(element('h2', {}, 'QUBIX'));

    root.appendChild(element('h3', { id: 'qx-market-heading' }, 'Marketplace'));
    this._market = element('dl', { 'aria-labelledby': 'qx-market-heading' });
    root.appendChild(this._market);

    root.appendChild(element('h3', { id: 'qx-gpu-heading' }, 'This machine'));
    this._hardware = element('dl', { 'aria-labelledby': 'qx-gpu-heading' });
    root.appendChild(this._hardware);

    root.appendChild(element('h3', { id: 'qx-share-heading' }, 'Share my GPU'));
    const form = element('form', { 'aria-labelledby': 'qx-share-heading' });
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.share();
    });
    const priceLabel = element('label', { for: 'qx-price' }, 'Price (QU per GPU-hour)');
    this._price = element('input', {
      id: 'qx-price',
      type: 'number',
      min: '0',
      step: '1',
      inputmode: 'numeric',
      required: ''
    });
    this._price.value = String(this._settings.defaultPrice);
    const nameLabel = element('label', { for: 'qx-name' }, 'Offer name (optional)');
    this._name = element('input', { id: 'qx-name', type: 'text', maxlength: '100' });
    this._shareButton = element('button', { type: 'submit', id: 'qx-share' }, 'Share my GPU');
    this._stopButton = element(
      'button',
      { type: 'button', id: 'qx-stop', class: 'qx-secondary' },
      'Stop sharing'
    );
    this._stopButton.addEventListener('click', () => void this.stop());
    form.append(priceLabel, this._price, nameLabel, this._name, this._shareButton, this._stopButton);
    root.appendChild(form);

    const stateRow = element('p', {});
    stateRow.append('State: ');
    this._state = element('span', {
      class: 'qx-state',
      id: 'qx-state',
      role: 'status',
      'aria-live': 'polite'
    });
    stateRow.appendChild(this._state);
    root.appendChild(stateRow);
    this._details = element('dl', { 'aria-label': 'Your provider' });
    root.appendChild(this._details);
    this._error = element('div', { class: 'qx-error', id: 'qx-error', role: 'alert' });
    this._error.hidden = true;
    root.appendChild(this._error);
  }

  private _rows(list: HTMLElement, rows: [string, string][]): void {
    list.replaceChildren();
    for (const [term, value] of rows) {
      list.append(element('dt', {}, term), element('dd', {}, value));
    }
  }

  /** Reads everything again: the market, the GPUs (once), sharing's state. */
  async refresh(): Promise<void> {
    await Promise.all([this._refreshStatus(), this._refreshMarket(), this._detectOnce()]);
  }

  private async _detectOnce(): Promise<void> {
    if (this._detected) {
      return;
    }
    this._detected = true;
    const browser: BrowserGPU = await detectGPUBrowser();
    let native = 'no local QUBIX agent';
    if (this._agent) {
      try {
        const found = await requestAPI<DetectResponse>('agent/detect');
        native = found.cpuOnly
          ? `none (${found.notes.join('; ') || 'no GPU'}): shares the CPU`
          : found.label;
      } catch (error) {
        native = `detection failed: ${(error as Error).message}`;
      }
    }
    const seen =
      browser.api === 'none'
        ? (browser.note ?? 'none')
        : `${browser.renderer ?? 'unknown'} (${browser.api})`;
    this._rows(this._hardware, [
      ['Native GPU (NVML)', native],
      ['Browser GPU', seen]
    ]);
  }

  private async _refreshMarket(): Promise<void> {
    if (!this._agent) {
      this._rows(this._market, [['Market', this._settings.marketUrl || 'not configured']]);
      return;
    }
    try {
      const summary = await requestAPI<MarketSummary>('agent/market');
      const range =
        summary.minPrice === null
          ? '—'
          : `${summary.minPrice}–${summary.maxPrice} QU per GPU-hour`;
      this._rows(this._market, [
        ['Market', summary.marketUrl],
        ['Online offers', String(summary.onlineOffers)],
        ['Price range', range]
      ]);
    } catch (error) {
      this._rows(this._market, [['Market', `unreachable: ${(error as Error).message}`]]);
    }
  }

  private async _refreshStatus(): Promise<void> {
    try {
      this._show(await requestAPI<AgentStatus>('agent/status'));
    } catch (error) {
      if (error instanceof QubixAPIError && error.status === 404) {
        this._agent = false;
        this._show(null);
      } else {
        this._showError((error as Error).message, 'check that the Jupyter server is running');
      }
    }
  }

  private _show(status: AgentStatus | null): void {
    const previous = this._status ? this._status.state : null;
    this._status = status;
    const state = status ? status.state : 'no-agent';
    if (previous !== null && previous !== state) {
      // Our own offer coming online (or leaving) changes the marketplace summary too.
      void this._refreshMarket();
    }
    this._state.textContent = STATE_LABELS[state] ?? state;
    this._state.dataset.state = state;
    this.node.dataset.state = state;
    const busy = BUSY.has(state);
    this._shareButton.disabled = !this._agent || busy || state === 'online';
    this._stopButton.disabled = !this._agent || state === 'idle' || state === 'stopping';
    this._price.disabled = busy || state === 'online';
    if (status === null) {
      const price = Number(this._price.value) || this._settings.defaultPrice;
      this._error.hidden = false;
      this._error.replaceChildren(
        element(
          'p',
          {},
          'This Jupyter server runs no QUBIX agent. Share this machine from a terminal instead:'
        ),
        element('pre', { id: 'qx-installer' }, installerCommand(this._settings.marketUrl, price))
      );
    } else if (status.error) {
      this._showError(status.error, status.nextStep);
    } else {
      this._error.hidden = true;
      this._error.replaceChildren();
    }
    const rows: [string, string][] = [];
    if (status?.workerId) {
      rows.push(['Worker', status.workerId]);
    }
    if (status?.provider) {
      rows.push(['Provider', status.provider.status]);
    }
    if (status?.earningsToday !== null && status?.earningsToday !== undefined) {
      rows.push(['Earnings today', `${status.earningsToday} QU`]);
    }
    this._rows(this._details, rows);
    this._changed.emit(status);
    this._schedule(busy ? 700 : 5000);
  }

  private _showError(message: string, nextStep: string | null): void {
    this._error.hidden = false;
    this._error.replaceChildren(element('p', {}, message));
    if (nextStep) {
      this._error.appendChild(element('p', {}, `Next step: ${nextStep}`));
    }
  }

  private _schedule(ms: number): void {
    window.clearTimeout(this._timer);
    if (!this.isDisposed) {
      this._timer = window.setTimeout(() => void this._refreshStatus(), ms);
    }
  }

  async share(): Promise<void> {
    const price = Number(this._price.value);
    if (!Number.isInteger(price) || price < 0) {
      this._showError(
        'the price must be a whole number of QU (Qubic has no decimals)',
        'enter a price such as 10'
      );
      this._price.focus();
      return;
    }
    const body: Record<string, unknown> = { price };
    if (this._name.value.trim()) {
      body.name = this._name.value.trim();
    }
    try {
      this._show(
        await requestAPI<AgentStatus>('agent/share', {
          method: 'POST',
          body: JSON.stringify(body)
        })
      );
    } catch (error) {
      this._showError((error as Error).message, 'stop sharing, then share again');
    }
  }

  async stop(): Promise<void> {
    this._state.textContent = STATE_LABELS.stopping;
    try {
      this._show(await requestAPI<AgentStatus>('agent/stop', { method: 'POST' }));
    } catch (error) {
      this._showError((error as Error).message, 'try Stop sharing again');
    }
    void this._refreshMarket();
  }

  dispose(): void {
    window.clearTimeout(this._timer);
    super.dispose();
  }

  private _settings: PanelSettings;
  private _agent = true;
  private _detected = false;
  private _status: AgentStatus | null = null;
  private _timer = 0;
  private _changed = new Signal<this, AgentStatus | null>(this);
  private _market!: HTMLDListElement;
  private _hardware!: HTMLDListElement;
  private _details!: HTMLDListElement;
  private _state!: HTMLSpanElement;
  private _error!: HTMLDivElement;
  private _price!: HTMLInputElement;
  private _name!: HTMLInputElement;
  private _shareButton!: HTMLButtonElement;
  private _stopButton!: HTMLButtonElement;
}
