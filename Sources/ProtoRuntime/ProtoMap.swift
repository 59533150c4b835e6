/// The value of a protobuf `map<K, V>` field: unique keys, each with one value, kept in insertion order.
///
/// Protobuf maps in messages are mostly small (labels, metadata). Those are held as an array of entries and searched
/// linearly, which is cheaper than hashing every key on decode; past ``indexThreshold`` keys a hash index is kept
/// too, so large maps stay O(1) per lookup. Order is insertion order (wire order after decoding), which makes
/// encoding deterministic: equal maps built the same way encode to the same bytes. Equality and hashing ignore
/// order, as for a `Dictionary`. Convert with ``init(_:)`` and ``dictionary``.
///
/// ```swift
/// var event = Harpoon_V1_Event()
/// event.labels = ["team": "compute"]
/// event.labels["env"] = "prod"
/// for (key, value) in event.labels { print(key, value) }
/// ```
public struct ProtoMap<Key: Hashable & Sendable, Value: Hashable & Sendable>: Sendable {
    /// One key and its value.
    public struct Entry: Hashable, Sendable {
        public var key: Key
        public var value: Value

        @inlinable
        public init(key: consuming Key, value: consuming Value) {
            self.key = key
            self.value = value
        }
    }

    /// The number of keys above which a hash index is kept beside the entries. Below it, a linear search that
    /// compares lengths first is cheaper than hashing.
    public static var indexThreshold: Int { 32 }

    @usableFromInline var storage: [Entry]
    /// Key → position in `storage`, present only while `storage.count > indexThreshold`.
    @usableFromInline var index: [Key: Int]?
    /// One bit per key signature (see ``signature(of:)``) of the keys present, and possibly of removed ones. A new
    /// key whose bit is clear cannot be present, so inserting it skips the search: decoding a map of distinct
    /// keys is then linear.
    @usableFromInline var signatures: UInt64

    /// An empty map.
    @inlinable
    public init() {
        storage = []
        index = nil
        signatures = 0
    }

    /// A map with the dictionary's keys and values (in the dictionary's order).
    @inlinable
    public init(_ dictionary: [Key: Value]) {
        self.init()
        storage.reserveCapacity(dictionary.count)
        for (key, value) in dictionary {
            signatures |= Self.signature(of: key)
            storage.append(Entry(key: key, value: value))
        }
        rebuildIndexIfNeeded()
    }

    /// The entries, in insertion order.
    @inlinable
    public var entries: [Entry] { storage }

    /// The number of keys.
    @inlinable
    public var count: Int { storage.count }

    /// Whether the map has no keys.
    @inlinable
    public var isEmpty: Bool { storage.isEmpty }

    /// The keys, in insertion order.
    @inlinable
    public var keys: [Key] { storage.map(\.key) }

    /// The values, in insertion order of their keys.
    @inlinable
    public var values: [Value] { storage.map(\.value) }

    /// The map as a `Dictionary`.
    @inlinable
    public var dictionary: [Key: Value] {
        var result = [Key: Value](minimumCapacity: storage.count)
        for entry in storage { result[entry.key] = entry.value }
        return result
    }

    /// The position of `key` in the entries, if present.
    @inlinable
    func position(of key: Key) -> Int? {
        if let index { return index[key] }
        return storage.withUnsafeBufferPointer { buffer in
            for i in buffer.indices where Self.keysEqual(buffer[i].key, key) { return i }
            return nil
        }
    }

    /// A cheap 1-of-64 bit summarising `key`: for strings, from their length and first byte, known without hashing;
    /// other keys (integers, cheap to compare) all share one bit, so they are always searched.
    @inlinable @inline(__always)
    static func signature(of key: Key) -> UInt64 {
        if Key.self == String.self, let key = key as? String {
            let utf8 = key.utf8
            let mix = UInt64(truncatingIfNeeded: utf8.count) &* 31 &+ UInt64(utf8.first ?? 0)
            return 1 << (mix & 63)
        }
        return 1
    }

    /// Key equality for the linear search. Unequal `String`s are slow to compare in full, and most differ in length,
    /// which is known without reading them; the casts fold away when the map is specialised.
    @inlinable @inline(__always)
    static func keysEqual(_ a: Key, _ b: Key) -> Bool {
        if Key.self == String.self, let a = a as? String, let b = b as? String {
            return a.utf8.count == b.utf8.count && a == b
        }
        return a == b
    }

    /// The value for `key`; setting `nil` removes the key.
    @inlinable
    public subscript(key: Key) -> Value? {
        get { position(of: key).map { storage[$0].value } }
        set {
            if let newValue {
                updateValue(newValue, forKey: key)
            } else {
                removeValue(forKey: key)
            }
        }
    }

    /// Sets the value for `key`, keeping its position if present, and returns the old value.
    @inlinable
    @discardableResult
    public mutating func updateValue(_ value: consuming Value, forKey key: consuming Key) -> Value? {
        let signature = Self.signature(of: key)
        if index != nil || signatures & signature != 0, let i = position(of: key) {
            let old = storage[i].value
            storage[i].value = value
            return old
        }
        signatures |= signature
        if index != nil { index?[copy key] = storage.count }
        storage.append(Entry(key: key, value: value))
        if index == nil && storage.count > Self.indexThreshold {
            rebuildIndexIfNeeded()
        }
        return nil
    }

    /// Removes `key` and returns its value.
    @inlinable
    @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        guard let i = position(of: key) else { return nil }
        let old = storage.remove(at: i).value
        rebuildIndexIfNeeded()
        return old
    }

    /// Removes every key.
    @inlinable
    public mutating func removeAll() {
        storage.removeAll()
        index = nil
        signatures = 0
    }

    @inlinable
    mutating func rebuildIndexIfNeeded() {
        guard storage.count > Self.indexThreshold else {
            index = nil
            return
        }
        var newIndex = [Key: Int](minimumCapacity: storage.count)
        for (i, entry) in storage.enumerated() { newIndex[entry.key] = i }
        index = newIndex
    }
}

extension ProtoMap: Sequence {
    /// Iterates the entries in insertion order as `(key, value)` pairs.
    public struct Iterator: IteratorProtocol {
        @usableFromInline var base: IndexingIterator<[Entry]>

        @inlinable
        init(_ entries: [Entry]) { base = entries.makeIterator() }

        @inlinable
        public mutating func next() -> (key: Key, value: Value)? {
            base.next().map { ($0.key, $0.value) }
        }
    }

    @inlinable
    public func makeIterator() -> Iterator { Iterator(storage) }

    @inlinable
    public var underestimatedCount: Int { storage.count }
}

extension ProtoMap: ExpressibleByDictionaryLiteral {
    /// A map from a literal; a repeated key keeps its last value.
    @inlinable
    public init(dictionaryLiteral elements: (Key, Value)...) {
        self.init()
        for (key, value) in elements { updateValue(value, forKey: key) }
    }
}

extension ProtoMap: Hashable {
    /// Maps are equal when they have the same keys with the same values, in any order.
    @inlinable
    public static func == (lhs: ProtoMap, rhs: ProtoMap) -> Bool {
        guard lhs.count == rhs.count else { return false }
        for entry in lhs.storage {
            guard let i = rhs.position(of: entry.key), rhs.storage[i].value == entry.value else { return false }
        }
        return true
    }

    /// An order-independent hash, consistent with ``==(_:_:)``.
    @inlinable
    public func hash(into hasher: inout Hasher) {
        var combined = 0
        for entry in storage {
            var entryHasher = Hasher()
            entryHasher.combine(entry.key)
            entryHasher.combine(entry.value)
            combined ^= entryHasher.finalize()
        }
        hasher.combine(storage.count)
        hasher.combine(combined)
    }
}

extension ProtoMap: CustomStringConvertible {
    public var description: String {
        if storage.isEmpty { return "[:]" }
        return "[" + storage.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]"
    }
}
