import { PushConfigError } from '../errors/push-config.error.js';
import type { DeviceTransportKind } from '../interfaces/push-kind.interface.js';
import { CLIENT_HEADER_LENGTH, DEFAULT_MAX_CONTENT_LENGTH, MAX_U16, SERVER_HEADER_LENGTH } from '../protocol/protocol.constants.js';

/** When a heartbeat that finds nothing pending is answered with a 0x00 echo (DDPush `ACK_HEARTBEAT_POLICY`). */
export type EchoPolicy = 'never' | 'always' | 'sa_changed';

/** What the admission hook is told about a device seen for the first time. */
export interface AdmissionRequest {
  uuid: string;
  appId: number;
  transport: DeviceTransportKind;
  address: string;
  port: number;
}

/** Options of the per-device state machine. */
export interface DeviceEngineOptions {
  /** This node's id in routes and outcomes. Default `'local'`. */
  nodeId?: string;
  /** A UDP device is reachable this long after its last heartbeat. Default 60 s (DDPush). */
  reachableWindowMs?: number;
  /** Records not seen for this long are removed. Default 50 h (DDPush). */
  expiryMs?: number;
  /** How often the incremental sweep runs. Default 1 s. */
  sweepIntervalMs?: number;
  /** Heartbeat echo policy. Default `'never'`. */
  echo?: EchoPolicy;
  /**
   * Decides whether an unknown uuid may register. Synchronous: it runs on the
   * heartbeat path. Return false to refuse (counted as `admission-refused`).
   */
  admission?: (request: AdmissionRequest) => boolean;
  /** Device records held at most; new devices are refused (counted as `device-limit`) beyond. Default 1,000,000. */
  maxDevices?: number;
  /** Largest 0x20 content in bytes. Default 500 (DDPush). */
  maxContentLength?: number;
  /**
   * Anti-amplification: bytes sent by UDP to a device's address may not exceed
   * this multiple of the bytes received from that address. 0 disables the
   * check. Default 32 (one 21-byte heartbeat pays for a 500-byte message plus
   * a notice and a category frame).
   */
  udpReplyFactor?: number;
  /** Most UDP reply credit a device can bank, in bytes. Default 8 KiB. */
  udpReplyCreditMax?: number;
}

export type ResolvedDeviceEngineOptions = Required<Omit<DeviceEngineOptions, 'admission'>> & Pick<DeviceEngineOptions, 'admission'>;

function positiveInt(name: string, value: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw new PushConfigError(name, `expected an integer in 1..${max}, got ${String(value)}`);
  }
  return value;
}

/** Fills defaults and checks every option; throws `PushConfigError` naming the bad one. */
export function resolveDeviceEngineOptions(options: DeviceEngineOptions = {}, prefix = ''): ResolvedDeviceEngineOptions {
  const n = (k: string) => prefix + k;
  const o: ResolvedDeviceEngineOptions = {
    nodeId: options.nodeId ?? 'local',
    reachableWindowMs: positiveInt(n('reachableWindowMs'), options.reachableWindowMs ?? 60_000),
    expiryMs: positiveInt(n('expiryMs'), options.expiryMs ?? 50 * 3600_000),
    sweepIntervalMs: positiveInt(n('sweepIntervalMs'), options.sweepIntervalMs ?? 1000),
    echo: options.echo ?? 'never',
    admission: options.admission,
    maxDevices: positiveInt(n('maxDevices'), options.maxDevices ?? 1_000_000, 0x7fffffff),
    maxContentLength: positiveInt(n('maxContentLength'), options.maxContentLength ?? DEFAULT_MAX_CONTENT_LENGTH, MAX_U16 - SERVER_HEADER_LENGTH),
    udpReplyFactor: options.udpReplyFactor ?? 32,
    udpReplyCreditMax: options.udpReplyCreditMax ?? 8192,
  };
  if (typeof o.nodeId !== 'string' || o.nodeId.length === 0) throw new PushConfigError(n('nodeId'), 'expected a non-empty string');
  if (!['never', 'always', 'sa_changed'].includes(o.echo)) {
    throw new PushConfigError(n('echo'), `expected 'never', 'always' or 'sa_changed', got ${String(o.echo)}`);
  }
  if (o.admission !== undefined && typeof o.admission !== 'function') throw new PushConfigError(n('admission'), 'expected a function (request) => boolean');
  if (o.expiryMs < o.reachableWindowMs) {
    throw new PushConfigError(n('expiryMs'), `must be at least reachableWindowMs (${o.reachableWindowMs}), got ${o.expiryMs}`);
  }
  if (typeof o.udpReplyFactor !== 'number' || !Number.isInteger(o.udpReplyFactor) || o.udpReplyFactor < 0) {
    throw new PushConfigError(n('udpReplyFactor'), `expected an integer >= 0 (0 disables the check), got ${String(o.udpReplyFactor)}`);
  }
  positiveInt(n('udpReplyCreditMax'), o.udpReplyCreditMax, 0x7fffffff);
  if (o.udpReplyFactor > 0) {
    // One heartbeat must be able to pay for everything a device can have pending,
    // or a large message would never leave over UDP.
    const worst = SERVER_HEADER_LENGTH * 3 + 8 + o.maxContentLength;
    const perHeartbeat = Math.min(o.udpReplyFactor * CLIENT_HEADER_LENGTH, o.udpReplyCreditMax);
    if (perHeartbeat < worst) {
      const needFactor = Math.ceil(worst / CLIENT_HEADER_LENGTH);
      throw new PushConfigError(
        n('udpReplyFactor'),
        `a 21-byte heartbeat earns ${perHeartbeat} bytes of UDP reply credit, less than one full set of pending frames (${worst} bytes with maxContentLength ${o.maxContentLength}); ` +
          `raise udpReplyFactor to at least ${needFactor} (and udpReplyCreditMax to at least ${worst}), or lower maxContentLength`,
      );
    }
  }
  return o;
}
