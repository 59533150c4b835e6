import ServiceRuntime

// Swift concurrency runs on the NIO event loops: Hummingbird's handlers and the RPC clients' I/O share threads, so a
// request does not hop between the concurrency pool and the event loops at every await (measured by make bench-api).
ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(AggregatorCommand.self)
