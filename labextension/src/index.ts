import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { AgentStatus } from './api';
import { PanelSettings, QubixPanel } from './panel';

const PLUGIN_ID = 'qubix-jupyter:plugin';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
  '<path d="M4 6h16v10H4zM2 18h20v2H2zM6 8v6h12V8z" fill-rule="evenodd"/></g></svg>';

const qubixIcon = new LabIcon({ name: 'qubix-jupyter:gpu', svgstr: ICON_SVG });

namespace CommandIDs {
  export const share = 'qubix:share';
  export const stop = 'qubix:stop';
  export const open = 'qubix:open-marketplace';
}

function readSettings(settings: ISettingRegistry.ISettings | null): PanelSettings {
  return {
    marketUrl: (settings?.get('marketUrl').composite as string) ?? '',
    defaultPrice: (settings?.get('defaultPrice').composite as number) ?? 10
  };
}

function statusText(status: AgentStatus | null): string {
  if (status === null) {
    return 'QUBIX: no agent';
  }
  if (status.state === 'online') {
    return `QUBIX: online · ${status.earningsToday ?? 0} QU today`;
  }
  return status.state === 'idle' ? 'QUBIX: not sharing' : `QUBIX: ${status.state}`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'QUBIX: the GPU marketplace and Share my GPU in the sidebar',
  autoStart: true,
  requires: [ILabShell],
  optional: [ICommandPalette, ISettingRegistry, IStatusBar],
  activate: async (
    app: JupyterFrontEnd,
    shell: ILabShell,
    palette: ICommandPalette | null,
    registry: ISettingRegistry | null,
    statusBar: IStatusBar | null
  ) => {
    let settings: ISettingRegistry.ISettings | null = null;
    if (registry) {
      try {
        settings = await registry.load(PLUGIN_ID);
      } catch (error) {
        console.warn('QUBIX: settings not loaded, using the defaults', error);
      }
    }
    const panel = new QubixPanel(readSettings(settings));
    panel.title.icon = qubixIcon;
    shell.add(panel, 'left', { rank: 900 });
    settings?.changed.connect(() => {
      panel.settings = readSettings(settings);
    });

    app.commands.addCommand(CommandIDs.open, {
      label: 'QUBIX: Open marketplace',
      execute: () => shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.share, {
      label: 'QUBIX: Share my GPU',
      execute: async () => {
        shell.activateById(panel.id);
        await panel.share();
      }
    });
    app.commands.addCommand(CommandIDs.stop, {
      label: 'QUBIX: Stop sharing',
      isEnabled: () => panel.status !== null && panel.status.state !== 'idle',
      execute: () => panel.stop()
    });
    if (palette) {
      for (const command of [CommandIDs.share, CommandIDs.stop, CommandIDs.open]) {
        palette.addItem({ command, category: 'QUBIX' });
      }
    }

    if (statusBar) {
      const item = new Widget();
      item.node.textContent = statusText(null);
      item.node.setAttribute('aria-label', 'QUBIX sharing status');
      item.node.classList.add('qx-statusbar');
      panel.changed.connect((_, status) => {
        item.node.textContent = statusText(status);
        app.commands.notifyCommandChanged(CommandIDs.stop);
      });
      item.node.addEventListener('click', () => shell.activateById(panel.id));
      statusBar.registerStatusItem('qubix-jupyter:status', {
        item,
        align: 'left',
        rank: 900
      });
    }
    await panel.refresh();
  }
};

export default plugin;
