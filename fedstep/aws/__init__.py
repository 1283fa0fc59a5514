"""boto3 adapters of the core's ports (`adapters`), client construction (`boto`), AWS error
explanations (`errors`), DynamoDB attribute encoding (`ddb`) and stack outputs (`stack`)."""
