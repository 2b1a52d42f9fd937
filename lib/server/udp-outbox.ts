import type { Socket as UdpSocket } from 'node:dgram';

/**
 * Datagrams to devices, sent together at the end of the current event-loop
 * callback (a `process.nextTick`), in the order they were queued.
 *
 * Why: the engine sends a push while it handles the task, between the store
 * write and the outcome tracking of every other task of the same pusher read.
 * Sent one by one, interleaved with that work, each datagram is likely to
 * find its receiver asleep and pay for waking it (on a VM, an inter-processor
 * interrupt each), and a device process then wakes for every datagram. Sent
 * back to back, the first wakes the receiver and the rest find it running.
 * The delay is the rest of the callback (a few hundred µs at most), and
 * nothing waits on the send itself: a failed send only counts (`onSendDone`).
 *
 * Only one send in `checkEvery` carries a completion callback. Node defers
 * the callback of every send that completes at once (a `process.nextTick`
 * per datagram: a queued call, its arguments, a pass of the tick loop), which
 * cost about a twentieth of the server's time per push; a send without a
 * callback that fails is silently dropped by Node. Send failures on a UDP
 * socket come from conditions that last (no route, a firewall, a full
 * interface queue, an oversized frame), so a sample shows them. A send made
 * without a socket (closed) always fails through `onSendDone`, at no cost.
 *
 * Bounded: at `max` queued datagrams the queue is sent at once, so one long
 * callback (a pusher read of thousands of tasks) holds at most `max` frames.
 */
export class UdpOutbox {
  // Reused from burst to burst: the push path allocates no queue per burst.
  private readonly frames: Buffer[] = [];
  private readonly ports: number[] = [];
  private readonly addresses: string[] = [];
  private scheduled = false;
  /** Sends until the next one carries a completion callback. */
  private untilCheck = 1;
  private readonly flushTick = (): void => {
    this.scheduled = false;
    this.flush();
  };

  /**
   * @param onSendDone hears how each checked send ended (`null`: sent), and
   *   every send attempted without a socket.
   * @param max datagrams queued at most before they are sent at once.
   * @param checkEvery one send in this many is checked (1: every send).
   */
  constructor(
    private readonly socket: () => UdpSocket | undefined,
    private readonly onSendDone: (err: Error | null) => void,
    readonly max = 64,
    readonly checkEvery = 16,
  ) {
    if (!Number.isInteger(checkEvery) || checkEvery < 1) throw new RangeError(`checkEvery must be a positive integer, got ${checkEvery}`);
  }

  /**
   * Set while the device port handles one incoming datagram: what it sends
   * then (a heartbeat's echo, a pending push re-sent) is all that callback
   * sends, so it goes at once rather than paying for a deferred flush.
   */
  direct = false;

  /** Queues one datagram; it leaves with the others at the end of this callback (or now, when `max` are queued, or `direct`). */
  send(frame: Buffer, port: number, address: string): void {
    if (this.direct && this.frames.length === 0) {
      this.sendOne(frame, port, address, this.socket());
      return;
    }
    const n = this.frames.push(frame);
    this.ports.push(port);
    this.addresses.push(address);
    if (n >= this.max) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flushTick);
    }
  }

  /** Datagrams queued and not sent yet. */
  get size(): number {
    return this.frames.length;
  }

  /** Sends everything queued, in order. A closed socket fails each send through `onSendDone`. */
  flush(): void {
    const n = this.frames.length;
    if (n === 0) return;
    const { frames, ports, addresses } = this;
    const socket = this.socket();
    for (let i = 0; i < n; i++) this.sendOne(frames[i]!, ports[i]!, addresses[i]!, socket);
    // Anything a send callback queued meanwhile stays, in order, for the next flush.
    frames.copyWithin(0, n);
    ports.copyWithin(0, n);
    addresses.copyWithin(0, n);
    frames.length -= n;
    ports.length -= n;
    addresses.length -= n;
  }

  private sendOne(frame: Buffer, port: number, address: string, socket: UdpSocket | undefined): void {
    try {
      if (!socket) throw new Error('the device UDP socket is closed');
      if (--this.untilCheck === 0) {
        this.untilCheck = this.checkEvery;
        socket.send(frame, port, address, this.onSendDone);
      } else socket.send(frame, port, address);
    } catch (err) {
      this.onSendDone(err as Error);
    }
  }
}
