/** The three things a server can push (protocol.md section 4). */
export type PushKind = 'notice' | 'category' | 'message';

/** How a device reaches us. */
export type DeviceTransportKind = 'udp' | 'tcp';
