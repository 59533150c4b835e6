// harpoon: the event API and sole owner of the events database.
import ArgumentParser
import Foundation
import Harpoon
import HarpoonAPI
import Logging
import PostgresSupport
import SQLiteSupport
import ServiceRuntime

struct HarpoonCommand: ServiceCommand {
    static let configuration = CommandConfiguration(
        commandName: "harpoon", abstract: "Harpoon: the event API and the events database.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "Port to listen on (0: any free port).") var port = 50050
    @Option(
        help:
            "The database: a SQLite file (created if missing), or postgres://user[:password]@host[:port]/database, shared by every replica."
    )
    var database = "harpoon.sqlite"
    @Option(help: "PostgreSQL: connections this replica opens at most (fixed, whatever the load).")
    var databaseConnections = 8
    @Option(
        help:
            "PostgreSQL: how long an outbox entry stays with the replica working on it; a replica that dies has its entries taken over after this."
    )
    var outboxLeaseSeconds = 30.0
    @Option(
        help:
            "When a commit is on disk: full (synced before it is acknowledged: survives a machine crash) or normal (synced at checkpoints: survives a process crash)."
    )
    var sqliteSynchronous = "full"
    @Option(help: "The scheduler, host:port (replicas: several, comma-separated).") var scheduler = "127.0.0.1:50060"
    @Option(
        help:
            "A region's event routers, region=host:port (several: comma-separated, as each router advertises itself); repeat for each region."
    )
    var router: [String] = []

    func run() async throws {
        var routers: [String: [(address: String, client: RPCClient)]] = [:]
        for entry in router {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty else {
                throw ValidationError("--router takes region=host:port[,host:port...], not '\(entry)'")
            }
            for text in parts[1].split(separator: ",").map(String.init) {
                let address = try ServiceRuntime.address(text)
                routers[parts[0], default: []].append((text, ServiceRuntime.serviceClient([address])))
            }
        }
        guard let durability = SQLiteDurability(rawValue: sqliteSynchronous) else {
            throw ValidationError("--sqlite-synchronous is full or normal, not '\(sqliteSynchronous)'")
        }
        let store: any HarpoonStore
        let postgres: PostgresHarpoonStore?
        if PostgresAddress.isPostgres(database) {
            guard databaseConnections >= 2 else {
                throw ValidationError(
                    "--database-connections must be at least 2 (one listens for other replicas' changes)")
            }
            guard outboxLeaseSeconds > 0 else { throw ValidationError("--outbox-lease-seconds must be positive") }
            let opened = try await PostgresHarpoonStore.open(
                PostgresAddress(url: database), connections: databaseConnections, outboxLease: outboxLeaseSeconds)
            (store, postgres) = (opened, opened)
        } else {
            (store, postgres) = (try SQLiteHarpoonStore(path: database, durability: durability), nil)
        }
        let changes = ChangeNotifier()
        let schedulers = try scheduler.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !schedulers.isEmpty else { throw ValidationError("--scheduler needs at least one host:port") }
        let placer = SchedulerPlacer(
            client: ServiceRuntime.serviceClient(schedulers),
            replicas: schedulers.count > 1 ? schedulers.map { ServiceRuntime.serviceClient([$0]) } : []
        )
        let worker = OutboxWorker(
            store: store, placer: placer, delivery: RouterDelivery(regions: routers), onChange: { changes.changed() })
        let server = RPCServer(
            configuration: .init(host: host, port: port),
            services: [HarpoonService(store: store, worker: worker, changes: changes, placer: placer)],
            interceptors: ServiceRuntime.serverInterceptors
        )
        let metrics = try await ServiceRuntime.startMetrics(port: runtime.metricsPort, host: host)
        try await server.start()
        ServiceRuntime.announce("harpoon ready on \(host):\(server.port ?? port)")
        var background: [@Sendable () async -> Void] = [{ await worker.run() }]
        // The outbox and the database connections, as gauges (HarpoonMetrics).
        let logger = Logger(label: "harpoon")
        background.append(
            ServiceRuntime.gauges(every: runtime.metricsSampleSeconds, server: server) {
                if let error = await HarpoonMetrics.sample(store, now: Date().timeIntervalSince1970) {
                    logger.warning("the metrics sample could not read the database", metadata: ["error": "\(error)"])
                }
            })
        if let postgres {
            // Another replica's commit changed what watchers here follow. (Its outbox entries are its own worker's:
            // they become this one's only if that replica dies, when a lease lapses, which the sweep below finds.)
            // Another replica that stops gives back the entries it held: they are this one's to push at once.
            background.append { await postgres.listen(changed: { changes.changed() }, released: { worker.wake() }) }
            // The outbox as a whole, once a lease: entries another replica left, or queued and never took (it died).
            let sweep = outboxLeaseSeconds
            background.append {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(Int64(sweep * 1000)))
                    worker.wake()
                }
            }
        }
        await ServiceRuntime.run(server: server, metrics: metrics, background: background)
        // Stopping (SIGTERM): what this replica held goes back to the others now, not when its leases end.
        do {
            try await store.releaseOutbox(worker.held)
        } catch {
            logger.warning(
                "could not give the outbox entries held back to the other replicas (they take them when their leases end)",
                metadata: ["error": "\(error)"])
        }
        await postgres?.close()
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(HarpoonCommand.self)
