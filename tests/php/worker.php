<?php
// A PHP Gearman worker (php-gearman, libgearman) for the interop tests.
//
//   php worker.php SERVERS LEDGER FUNCTION...
// Runs jobs of the FUNCTIONs from all SERVERS ("host:port,...", GearmanWorker::addServers)
// until killed. Each job appends "FUNCTION UNIQUE PAYLOAD" to LEDGER before it completes;
// a job whose payload starts with "chatty" first sends WORK_DATA "part-1", WORK_STATUS 1/2
// and WORK_DATA "part-2". The result is the payload upper-cased. Prints "ready" once set up.

$servers = $argv[1];
$ledger = fopen($argv[2], "a");
$worker = new GearmanWorker();
$worker->addServers($servers);
$worker->setTimeout(500);  // work() returns now and then, so that lost servers are retried

$run = function (GearmanJob $job) use ($ledger) {
    $payload = $job->workload();
    if (str_starts_with($payload, "chatty")) {
        $job->sendData("part-1");
        $job->sendStatus(1, 2);
        $job->sendData("part-2");
    }
    fwrite($ledger, $job->functionName() . " " . $job->unique() . " " . $payload . "\n");
    fflush($ledger);
    return strtoupper($payload);
};
foreach (array_slice($argv, 3) as $function) {
    $worker->addFunction($function, $run);
}
fwrite(STDOUT, "ready\n");
fflush(STDOUT);
while (true) {
    @$worker->work();
    $code = $worker->returnCode();
    if ($code !== GEARMAN_SUCCESS && $code !== GEARMAN_TIMEOUT && $code !== GEARMAN_IO_WAIT
        && $code !== GEARMAN_NO_JOBS && $code !== GEARMAN_NO_ACTIVE_FDS) {
        usleep(100000);  // a server is down: libgearman reconnects on the next work()
    }
}
