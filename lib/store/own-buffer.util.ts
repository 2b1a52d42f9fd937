/**
 * The content a store keeps for a pending message, which may live for hours.
 * A view into a larger buffer (Node's shared 8 KiB allocation pool, a request
 * body) would keep all of that buffer alive and make `maxBytes` count a
 * fraction of the memory held, so such content is copied to a buffer of its
 * own; an exact-size buffer (what the pusher port decodes) is kept as it is.
 */
export function ownBuffer(content: Buffer): Buffer {
  if (content.byteLength === content.buffer.byteLength) return content;
  const own = Buffer.allocUnsafeSlow(content.length);
  own.set(content);
  return own;
}
