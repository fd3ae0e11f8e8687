go test fuzz v1
string("addond-hello.service.d")
