import type { BoardProfile } from '../api/index.js';

/**
 * The boards Ward knows how to name. Ports are found by the kernel's device
 * path of each interface or tty (what it is wired to), not by interface name
 * (eth0/end0/enx… change with kernels and udev rules). Paths were taken from
 * the device trees of the boards (Raspberry Pi 4: genet at fd580000, VL805
 * USB behind the fd500000 PCIe root; CM4 carrier: second NIC on that PCIe
 * root; Pi 5: RP1 at 1f00100000 for Ethernet, 1f00200000/1f00300000 for USB).
 * Specific profiles come first; `generic` matches anything and numbers
 * physical NICs in device-path order.
 */
const usbEthernet = (port: 1 | 2, bus = String.raw`fd500000\.pcie`) => new RegExp(String.raw`/${bus}/.*/usb\d/\d-${port}[.:/].*/net/`);

export const BOARD_PROFILES: readonly BoardProfile[] = [
  {
    id: 'rpi-cm4-dual-eth',
    name: 'Raspberry Pi Compute Module 4 on a dual-Ethernet carrier',
    source: 'device-tree',
    model: /^Raspberry Pi Compute Module 4\b/,
    ports: [
      { name: 'UPLINK', kind: 'ethernet', label: 'onboard Ethernet (BCM54210PE)', devicePath: /\/fd580000\.ethernet\/net\// },
      { name: 'PLC1', kind: 'ethernet', label: 'carrier Ethernet (PCIe NIC)', devicePath: /\/fd500000\.pcie\/pci0000:00\/0000:00:00\.0\/0000:01:00\.0\/net\// },
      { name: 'PLC2', kind: 'ethernet', label: 'USB Ethernet adapter, USB port 1', devicePath: usbEthernet(1, String.raw`fe980000\.usb`) },
      { name: 'RS485-1', kind: 'rs485', label: 'UART0 (GPIO 14/15) via RS-485 transceiver', devicePath: /\/fe201000\.serial\/tty\/ttyAMA0$/ },
    ],
    statusLeds: ['ACT', 'led0'],
  },
  {
    id: 'rpi4',
    name: 'Raspberry Pi 4 Model B',
    source: 'device-tree',
    model: /^Raspberry Pi 4 Model B\b/,
    ports: [
      { name: 'UPLINK', kind: 'ethernet', label: 'onboard Ethernet', devicePath: /\/fd580000\.ethernet\/net\// },
      { name: 'PLC1', kind: 'ethernet', label: 'USB Ethernet adapter, upper USB 3 port', devicePath: usbEthernet(1) },
      { name: 'PLC2', kind: 'ethernet', label: 'USB Ethernet adapter, lower USB 3 port', devicePath: usbEthernet(2) },
      { name: 'RS485-1', kind: 'rs485', label: 'UART0 (GPIO 14/15) via RS-485 HAT', devicePath: /\/fe201000\.serial\/tty\/ttyAMA0$/ },
    ],
    statusLeds: ['ACT', 'led0'],
  },
  {
    id: 'rpi5',
    name: 'Raspberry Pi 5',
    source: 'device-tree',
    model: /^Raspberry Pi 5\b/,
    ports: [
      { name: 'UPLINK', kind: 'ethernet', label: 'onboard Ethernet (RP1)', devicePath: /\/1f00100000\.ethernet\/net\// },
      { name: 'PLC1', kind: 'ethernet', label: 'USB Ethernet adapter, USB 3 port 1', devicePath: /\/1f00200000\.usb\/.*\/net\// },
      { name: 'PLC2', kind: 'ethernet', label: 'USB Ethernet adapter, USB 3 port 2', devicePath: /\/1f00300000\.usb\/.*\/net\// },
      { name: 'RS485-1', kind: 'rs485', label: 'UART0 (GPIO 14/15) via RS-485 HAT', devicePath: /\/1f00030000\.serial\/.*tty\/ttyAMA0$/ },
    ],
    statusLeds: ['ACT', 'led0'],
  },
  {
    id: 'generic',
    name: 'Generic Linux box (development, x86 industrial PCs)',
    source: 'dmi',
    model: /.*/,
    ports: [
      { name: 'UPLINK', kind: 'ethernet', label: 'first physical NIC', devicePath: /^\/sys\/devices\/(pci|platform)/, nth: 0 },
      { name: 'PLC1', kind: 'ethernet', label: 'second physical NIC', devicePath: /^\/sys\/devices\/(pci|platform)/, nth: 1 },
      { name: 'PLC2', kind: 'ethernet', label: 'third physical NIC', devicePath: /^\/sys\/devices\/(pci|platform)/, nth: 2 },
      { name: 'RS485-1', kind: 'rs485', label: 'first USB serial adapter', devicePath: /\/tty\/ttyUSB\d+$/, nth: 0 },
    ],
    statusLeds: [],
  },
];
