/// An IPv4 block in CIDR notation (`203.0.113.0/24`) that reserved addresses are drawn from.
package struct AddressBlock: Sendable, Hashable, CustomStringConvertible {
    package let network: UInt32
    package let prefixLength: Int

    /// Parses `a.b.c.d/n`; the address is masked to its network.
    package init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let length = Int(parts[1]), (8...30).contains(length),
            let address = IPv4.parse(String(parts[0]))
        else {
            return nil
        }
        let mask: UInt32 = length == 0 ? 0 : ~UInt32(0) << UInt32(32 - length)
        network = address & mask
        prefixLength = length
    }

    /// The usable host addresses: the block without its network and broadcast addresses.
    package var hosts: ClosedRange<UInt32> {
        let size = UInt32(1) << UInt32(32 - prefixLength)
        return (network + 1)...(network + size - 2)
    }

    package var description: String { "\(IPv4.format(network))/\(prefixLength)" }
}

/// IPv4 addresses as text and as numbers.
package enum IPv4 {
    /// Parses dotted-quad text strictly: four decimal parts 0–255, no leading zeros, nothing else.
    package static func parse(_ text: String) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), part.allSatisfy(\.isNumber),
                part == "0" || !part.hasPrefix("0"), let octet = UInt32(part), octet <= 255
            else { return nil }
            value = value << 8 | octet
        }
        return value
    }

    package static func format(_ value: UInt32) -> String {
        "\(value >> 24).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)"
    }
}

/// The address blocks of each region.
package struct AddressPools: Sendable {
    package var blocks: [String: [AddressBlock]]

    package init(blocks: [String: [AddressBlock]] = [:]) {
        self.blocks = blocks
    }

    /// Parses `region=cidr` entries (repeatable per region).
    package init(parsing entries: [String]) throws(ConfigurationError) {
        var blocks: [String: [AddressBlock]] = [:]
        for entry in entries {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let block = AddressBlock(parts[1]) else {
                throw ConfigurationError(message: "a pool is region=a.b.c.d/n with n from 8 to 30, not '\(entry)'")
            }
            blocks[parts[0], default: []].append(block)
        }
        self.blocks = blocks
    }

    package var regions: [String] { blocks.keys.sorted() }

    /// The first address of `region` after `last` (in pool order, wrapping round) that is not in `used`; nil when
    /// the region has none left (or no pool).
    package func nextFree(in region: String, after last: UInt32?, excluding used: Set<UInt32>) -> UInt32? {
        let all = (blocks[region] ?? []).lazy.flatMap { $0.hosts }
        var fallback: UInt32?
        for address in all where !used.contains(address) {
            guard let last else { return address }
            if address > last { return address }
            if fallback == nil { fallback = address }
        }
        return fallback
    }
}

package struct ConfigurationError: Error, CustomStringConvertible {
    package let message: String
    package var description: String { message }
}
