import ProtoRuntime

// Shoal codec harness for the codec anchors (../../shared/anchors/codec).
//
// usage: CodecBench CORPUS_DIR [SECONDS] [TYPE...]
// Same measuring protocol and output lines as the anchors' harnesses:
//   RESULT codec type op msgs_per_pass bytes_per_pass reps wall_seconds cpu_seconds
//   CHECK  codec type msgs size_equal byte_identical struct_equal
// decode       = init(serializedBytes:) of every message (the message is freed too, as in the C harness);
// encode       = serialize(into:) a reused buffer (size pass + write pass): protobuf-c's idiom in its harness;
// encode-array = serializedBytes() into a fresh [UInt8] each time: swift-protobuf's idiom in its harness.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

let codec = "shoal"

@inline(never) func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

func clockSeconds(_ id: clockid_t) -> Double {
    var ts = timespec()
    clock_gettime(id, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
func now() -> Double { clockSeconds(CLOCK_MONOTONIC) }
func cpuNow() -> Double { clockSeconds(CLOCK_PROCESS_CPUTIME_ID) }

func readFile(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n <= 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}

/// Splits varint-length-delimited messages into separate arrays.
func splitDelimited(_ data: [UInt8]) -> [[UInt8]] {
    var msgs: [[UInt8]] = []
    var i = 0
    while i < data.count {
        var len = 0
        var shift = 0
        while true {
            let b = Int(data[i])
            i += 1
            len |= (b & 0x7f) << shift
            if b < 0x80 { break }
            shift += 7
        }
        msgs.append(Array(data[i..<(i + len)]))
        i += len
    }
    return msgs
}

/// Warm-up pass, calibration on passes worth >= 10% of the target, then enough passes to take `seconds`.
func measure(_ seconds: Double, _ pass: () throws -> Int) rethrows -> (Int, Double, Double) {
    // CODEC_BENCH_PASSES=N: exactly N passes, no warm-up or calibration (for instruction counting under callgrind).
    if let fixed = getenv("CODEC_BENCH_PASSES").flatMap({ Int(String(cString: $0)) }) {
        var sink = 0
        let c0 = cpuNow()
        let t0 = now()
        for _ in 0..<fixed { sink &+= try pass() }
        blackHole(sink)
        return (fixed, now() - t0, cpuNow() - c0)
    }
    blackHole(try pass())
    var t0 = now()
    var cal = 0
    var el = 0.0
    repeat {
        blackHole(try pass())
        cal += 1
        el = now() - t0
    } while el < seconds * 0.1
    let reps = max(1, Int((seconds / (el / Double(cal))).rounded(.up)))
    var sink = 0
    let c0 = cpuNow()
    t0 = now()
    for _ in 0..<reps { sink &+= try pass() }
    let elapsed = now() - t0
    let cpu = cpuNow() - c0
    blackHole(sink)
    return (reps, elapsed, cpu)
}

func bench<M: ProtoMessage>(_: M.Type, type: String, path: String, seconds: Double) throws {
    guard let raw = readFile(path) else {
        print("skip \(type): no \(path)")
        return
    }
    let bufs = splitDelimited(raw)
    let totalBytes = bufs.reduce(0) { $0 + $1.count }

    var sizeEq = 0
    var byteEq = 0
    var structEq = 0
    var decoded: [M] = []
    decoded.reserveCapacity(bufs.count)
    for b in bufs {
        let m = try M(serializedBytes: b)
        let out = m.serializedBytes()
        if out.count == b.count { sizeEq += 1 }
        if out == b { byteEq += 1 }
        if try M(serializedBytes: out) == m { structEq += 1 }
        decoded.append(m)
    }
    print("CHECK \(codec) \(type) \(bufs.count) \(sizeEq) \(byteEq) \(structEq)")
    // CODEC_BENCH_OPS=decode, encode or encode-array limits the run to one operation, for profiling.
    let only = getenv("CODEC_BENCH_OPS").map { String(cString: $0) }
    func report(_ op: String, _ pass: () throws -> Int) rethrows {
        guard only == nil || only == op else { return }
        let (reps, secs, cpu) = try measure(seconds, pass)
        print("RESULT \(codec) \(type) \(op) \(bufs.count) \(totalBytes) \(reps) \(secs) \(cpu)")
    }

    try report("decode") {
        var n = 0
        for b in bufs {
            blackHole(try M(serializedBytes: b))
            n &+= 1
        }
        return n
    }

    let maxLength = bufs.map(\.count).max() ?? 0
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maxLength * 2 + 64, alignment: 16)
    defer { buffer.deallocate() }
    report("encode") {
        var n = 0
        for m in decoded { n &+= m.serialize(into: buffer) ?? 0 }  // size pass, then writes
        return n
    }

    report("encode-array") {
        var n = 0
        for m in decoded { n &+= m.serializedBytes().count }
        return n
    }
}

let args = CommandLine.arguments
guard args.count >= 2 else {
    print("usage: CodecBench CORPUS_DIR [SECONDS] [TYPE...]")
    exit(2)
}
let dir = args[1]
let seconds = args.count >= 3 ? Double(args[2]) ?? 1.5 : 1.5
let only = Set(args.dropFirst(3))

let table: [(String, String, (String, String, Double) throws -> Void)] = [
    ("events", "events.bin", { try bench(Bench_V1_Event.self, type: $0, path: $1, seconds: $2) }),
    (
        "metrics", "hypervisor_metrics.bin",
        { try bench(Bench_V1_HypervisorMetrics.self, type: $0, path: $1, seconds: $2) }
    ),
    ("batches", "event_batches.bin", { try bench(Bench_V1_EventBatch.self, type: $0, path: $1, seconds: $2) }),
]

for (type, file, run) in table where only.isEmpty || only.contains(type) {
    try run(type, dir + "/" + file, seconds)
    fflush(nil)
}
