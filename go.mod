module github.com/smr-io/smr-cri

go 1.26
