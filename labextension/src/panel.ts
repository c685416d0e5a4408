import { PageConfig } from '@jupyterlab/coreutils';
import { Widget } from '@lumino/widgets';
import { ISignal, Signal } from '@lumino/signaling';

import {
  AgentStatus,
  DetectResponse,
  HealthResponse,
  InstallCommand,
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

/**
 * Where no agent can issue a provisioning token: the command that shares a machine signed in
 * with the user's own wallet seed file on that machine.
 */
export function seedCommand(marketUrl: string, price: number): string {
  const market = marketUrl || '<market URL>';
  return (
    'pip install qubix-jupyter && ' +
    `qubix provide --market ${market} --price ${price} --seed-file ~/.qubix/seed`
  );
}

/** Show an error and, when there is one, the next step to take, in `box`. */
function showError(box: HTMLElement, message: string, nextStep: string | null): void {
  box.hidden = false;
  box.replaceChildren(element('p', {}, message));
  if (nextStep) {
    box.appendChild(element('p', {}, `Next step: ${nextStep}`));
  }
}

function formatTime(iso: string): string {
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? iso : when.toLocaleString();
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
    this._noAgentShown = false; // the command names the market URL of the settings
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
    this._buildOtherMachine(root);
  }

  /** "Share another machine": the command for a machine without an agent (the installer). */
  private _buildOtherMachine(root: HTMLElement): void {
    root.appendChild(element('h3', { id: 'qx-other-heading' }, 'Share another machine'));
    const section = element('section', {
      id: 'qx-other',
      'aria-labelledby': 'qx-other-heading'
    });
    this._otherIntro = element(
      'p',
      { id: 'qx-other-intro' },
      'For a machine without a QUBIX agent (this Lab runs elsewhere, or the GPU is on ' +
        'another computer): one command there registers its GPUs for this agent’s wallet, ' +
        'at the price above.'
    );
    this._createButton = element(
      'button',
      { type: 'button', id: 'qx-install-create', class: 'qx-secondary' },
      'Create install command'
    );
    this._createButton.addEventListener('click', () => void this.createInstallCommand());
    this._install = element('div', { id: 'qx-install' });
    this._install.hidden = true;
    const label = element(
      'label',
      { for: 'qx-installer' },
      'Install command (run it on the machine to share)'
    );
    this._installer = element('textarea', {
      id: 'qx-installer',
      readonly: '',
      rows: '6',
      spellcheck: 'false',
      'aria-describedby': 'qx-install-note'
    });
    this._installNote = element('p', { id: 'qx-install-note' });
    this._copyButton = element(
      'button',
      { type: 'button', id: 'qx-install-copy' },
      'Copy command'
    );
    this._copyButton.addEventListener('click', () => void this.copyInstallCommand());
    this._revokeButton = element(
      'button',
      { type: 'button', id: 'qx-install-revoke', class: 'qx-secondary' },
      'Revoke its token'
    );
    this._revokeButton.addEventListener('click', () => void this.revokeInstallToken());
    this._install.append(
      label,
      this._installer,
      this._installNote,
      this._copyButton,
      this._revokeButton
    );
    this._installStatus = element('p', {
      id: 'qx-install-status',
      role: 'status',
      'aria-live': 'polite'
    });
    this._installError = element('div', {
      class: 'qx-error',
      id: 'qx-install-error',
      role: 'alert'
    });
    this._installError.hidden = true;
    section.append(
      this._otherIntro,
      this._createButton,
      this._install,
      this._installStatus,
      this._installError
    );
    root.appendChild(section);
  }

  /** The price field's value, or null after saying what is wrong with it. */
  private _validPrice(show: (message: string, nextStep: string) => void): number | null {
    const price = Number(this._price.value);
    if (this._price.value.trim() === '' || !Number.isInteger(price) || price < 0) {
      show(
        'the price must be a whole number of QU (Qubic has no decimals)',
        'enter a price such as 10'
      );
      this._price.focus();
      return null;
    }
    return price;
  }

  private _showInstallError(message: string, nextStep: string | null): void {
    showError(this._installError, message, nextStep);
  }

  /** Asks the agent for a provisioning token and shows the command that uses it. */
  async createInstallCommand(): Promise<void> {
    if (!this._agent) {
      return;
    }
    this._installError.hidden = true;
    const price = this._validPrice((message, step) => this._showInstallError(message, step));
    if (price === null) {
      return;
    }
    this._createButton.disabled = true;
    this._installStatus.textContent = 'Creating a provisioning token…';
    try {
      const made = await requestAPI<InstallCommand>('agent/install-command', {
        method: 'POST',
        body: JSON.stringify({ price })
      });
      this._command = made;
      this._installer.value = made.command;
      this._installNote.textContent =
        `Its token registers machines with ${made.marketUrl}, paid to this agent’s ` +
        `wallet, until ${formatTime(made.expiresAt)}; it can do nothing else. Anyone ` +
        'who has the command can use it: revoke the token when you are done.';
      this._install.hidden = false;
      this._revokeButton.disabled = false;
      this._installStatus.textContent = 'Install command ready: copy it to the other machine.';
      this._installer.focus();
      this._installer.select();
    } catch (error) {
      this._installStatus.textContent = '';
      const why = (error as Error).message;
      const step =
        error instanceof QubixAPIError && error.nextStep
          ? error.nextStep
          : 'check the Jupyter server’s log, then try again';
      this._showInstallError(`No install command: ${why}`, step);
    } finally {
      this._createButton.disabled = false;
    }
  }

  async copyInstallCommand(): Promise<void> {
    const text = this._installer.value;
    this._installer.focus();
    this._installer.select();
    try {
      await navigator.clipboard.writeText(text);
      this._installStatus.textContent = 'Copied the install command.';
    } catch {
      const copied = document.execCommand && document.execCommand('copy');
      this._installStatus.textContent = copied
        ? 'Copied the install command.'
        : 'The browser did not allow copying: the command is selected, press Ctrl+C (⌘C).';
    }
  }

  async revokeInstallToken(): Promise<void> {
    const made = this._command;
    if (!made) {
      return;
    }
    this._revokeButton.disabled = true;
    this._installError.hidden = true;
    try {
      await requestAPI(`agent/install-command/${encodeURIComponent(made.tokenId)}`, {
        method: 'DELETE'
      });
      this._command = null;
      this._installer.value = '';
      this._install.hidden = true;
      this._installStatus.textContent =
        'Token revoked: that command registers nothing more (machines it registered keep ' +
        'running until you stop them there).';
      this._createButton.focus();
    } catch (error) {
      this._revokeButton.disabled = false;
      const step =
        error instanceof QubixAPIError && error.nextStep
          ? error.nextStep
          : 'try Revoke its token again';
      this._showInstallError(`The token was not revoked: ${(error as Error).message}`, step);
    }
  }

  /** No agent here: no token can be had; say why, and give the seed-file command instead. */
  private async _showNoAgentCommand(): Promise<void> {
    let market = this._settings.marketUrl;
    if (!market) {
      try {
        const health = await requestAPI<HealthResponse>('health');
        if (health.role === 'market') {
          market = PageConfig.getBaseUrl(); // this server is the market
        }
      } catch {
        // no QUBIX on this server: the command says <market URL>
      }
    }
    const price = Number(this._price.value) || this._settings.defaultPrice;
    this._otherIntro.textContent =
      'This Jupyter server runs no QUBIX agent, so it cannot create a provisioning token ' +
      'for you (the agent is what signs in with your wallet; its operator can turn it on ' +
      'with c.QubixExtension.role = "both"). Share the machine from a terminal there ' +
      'instead, signed in with your own wallet’s seed file:';
    this._createButton.hidden = true;
    this._revokeButton.hidden = true;
    this._installer.value = seedCommand(market, price);
    this._installNote.textContent =
      (market ? '' : 'Put your market’s URL in Settings → QUBIX, or in the command. ') +
      '~/.qubix/seed is your wallet’s seed file on that machine (mode 600); without one, ' +
      '`qubix wallet new --seed-file ~/.qubix/seed` makes a new wallet.';
    this._install.hidden = false;
  }

  private _rows(list: HTMLElement, rows: [string, string][]): void {
    list.replaceChildren();
    for (const [term, value] of rows) {
      list.append(element('dt', {}, term), element('dd', {}, value));
    }
  }

  /** Reads everything again: the market, the GPUs (once), sharing's state. */
  async refresh(): Promise<void> {
    // The status first: it tells whether this server runs an agent to ask the rest.
    await this._refreshStatus();
    await Promise.all([this._refreshMarket(), this._detectOnce()]);
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
      this._error.hidden = false;
      this._error.replaceChildren(
        element(
          'p',
          {},
          'This Jupyter server runs no QUBIX agent: it cannot share this machine. ' +
            'See Share another machine below.'
        )
      );
      if (!this._noAgentShown) {
        this._noAgentShown = true;
        void this._showNoAgentCommand();
      }
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
    showError(this._error, message, nextStep);
  }

  private _schedule(ms: number): void {
    window.clearTimeout(this._timer);
    if (!this.isDisposed) {
      this._timer = window.setTimeout(() => void this._refreshStatus(), ms);
    }
  }

  async share(): Promise<void> {
    const price = this._validPrice((message, step) => this._showError(message, step));
    if (price === null) {
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
  private _command: InstallCommand | null = null;
  private _noAgentShown = false;
  private _otherIntro!: HTMLParagraphElement;
  private _createButton!: HTMLButtonElement;
  private _install!: HTMLDivElement;
  private _installer!: HTMLTextAreaElement;
  private _installNote!: HTMLParagraphElement;
  private _copyButton!: HTMLButtonElement;
  private _revokeButton!: HTMLButtonElement;
  private _installStatus!: HTMLParagraphElement;
  private _installError!: HTMLDivElement;
}
