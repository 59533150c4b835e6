/// One metadata value: text for ordinary keys, bytes for `-bin` keys.
public enum MetadataValue: Sendable, Hashable {
    case string(String)
    case binary([UInt8])
}

/// gRPC metadata: an ordered multimap of lowercase keys to text or binary values.
///
/// Keys ending in `-bin` carry bytes (base64 on the wire); every other key carries printable ASCII. Request metadata
/// travels as HTTP/2 headers; response metadata as headers (initial) or trailers.
///
/// ```swift
/// var metadata: Metadata = ["authorization": "Bearer t0k3n"]
/// metadata.add("trace-bin", binary: [0x01, 0x02])
/// metadata["authorization"]  // "Bearer t0k3n"
/// ```
public struct Metadata: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    /// A key and its value.
    public struct Entry: Sendable, Hashable {
        public var key: String
        public var value: MetadataValue
    }

    private var entries: [Entry] = []

    public init() {}

    public init(dictionaryLiteral elements: (String, String)...) {
        for (key, value) in elements { add(key, value) }
    }

    /// Appends a text value; the key is lowercased.
    public mutating func add(_ key: String, _ value: String) {
        entries.append(Entry(key: key.lowercased(), value: .string(value)))
    }

    /// Appends a binary value under a key that must end in `-bin`; the key is lowercased.
    public mutating func add(_ key: String, binary value: [UInt8]) {
        entries.append(Entry(key: key.lowercased(), value: .binary(value)))
    }

    /// Removes every value under `key`.
    public mutating func removeAll(_ key: String) {
        let key = key.lowercased()
        entries.removeAll { $0.key == key }
    }

    /// The first text value under `key`; setting replaces every value under it.
    public subscript(key: String) -> String? {
        get {
            let key = key.lowercased()
            for entry in entries where entry.key == key {
                if case .string(let text) = entry.value { return text }
            }
            return nil
        }
        set {
            removeAll(key)
            if let newValue { add(key, newValue) }
        }
    }

    /// The first binary value under `key`.
    public subscript(binary key: String) -> [UInt8]? {
        let key = key.lowercased()
        for entry in entries where entry.key == key {
            if case .binary(let bytes) = entry.value { return bytes }
        }
        return nil
    }

    /// Every value under `key`, in order.
    public func values(for key: String) -> [MetadataValue] {
        let key = key.lowercased()
        return entries.filter { $0.key == key }.map(\.value)
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    public func makeIterator() -> IndexingIterator<[Entry]> { entries.makeIterator() }

    public var description: String {
        "["
            + entries.map { entry in
                switch entry.value {
                case .string(let text): "\(entry.key): \(text)"
                case .binary(let bytes): "\(entry.key): <\(bytes.count) bytes>"
                }
            }.joined(separator: ", ") + "]"
    }
}

extension Metadata {
    /// Headers that the gRPC protocol owns; they never appear in application metadata.
    package static func isReserved(_ key: String) -> Bool {
        if key.hasPrefix(":") { return true }
        switch key {
        case "content-type", "te", "user-agent", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
            "grpc-status", "grpc-message", "grpc-status-details-bin", "content-length", "connection",
            "host", "transfer-encoding", "keep-alive", "upgrade":
            return true
        default:
            return false
        }
    }

    /// Adds a header as received from the wire: `-bin` values are base64-decoded (padded or not).
    ///
    /// - Returns: `false` if a `-bin` value is not valid base64 (the entry is dropped).
    @discardableResult
    package mutating func addWireHeader(name: String, value: String) -> Bool {
        if name.hasSuffix("-bin") {
            guard let bytes = Base64.decode(value) else { return false }
            entries.append(Entry(key: name, value: .binary(bytes)))
        } else {
            entries.append(Entry(key: name, value: .string(value)))
        }
        return true
    }

    /// The entries as wire headers: `-bin` values base64-encoded without padding, as the spec recommends.
    package func forEachWireHeader(_ body: (String, String) -> Void) {
        for entry in entries where !Self.isReserved(entry.key) {
            switch entry.value {
            case .string(let text): body(entry.key, text)
            case .binary(let bytes): body(entry.key, Base64.encode(bytes))
            }
        }
    }
}
