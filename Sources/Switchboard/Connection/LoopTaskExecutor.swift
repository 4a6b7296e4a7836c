import NIOCore

/// Runs a task's jobs on one event loop: a request frame's route then runs on its connection's
/// loop, with no hop to the cooperative pool and back (two thread wake-ups a request). Routes
/// that await something elsewhere (the engine, a backend) resume here too.
@available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
final class LoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

extension LoopHub {
    /// Starts `operation` on this hub's loop (on the cooperative pool where the platform has no
    /// task executors).
    func startTask(_ operation: sending @escaping () async -> Void) {
        if #available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *), let executor = self.executor as? LoopTaskExecutor {
            Task(executorPreference: executor, operation: operation)
        } else {
            Task(operation: operation)
        }
    }

    /// Runs `body` on the loop: at once when already there, else enqueued.
    func onLoop(_ body: @escaping @Sendable () -> Void) {
        if self.loop.inEventLoop { body() } else { self.loop.execute(body) }
    }

    static func makeExecutor(_ loop: any EventLoop) -> (any Sendable)? {
        if #available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *) { return LoopTaskExecutor(loop) }
        return nil
    }
}
